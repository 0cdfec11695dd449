"""Static checks of docker-compose.yml, the service Dockerfiles and .dockerignore.

There is no Docker engine where the tests run, so this reads the files and checks what a
`docker compose up --build` would trip over: missing build inputs, a layer order that
reinstalls dependencies on every code edit, volumes that don't land on the relative
logs/ and models/ paths under WORKDIR /app, and a start order that doesn't wait for
RabbitMQ or for the trained model.

Everything is driven by the services found in the compose file, so a service added later
(e.g. dashboard) is checked the same way.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERIGNORE_FILE = REPO_ROOT / ".dockerignore"
BROKER = "rabbitmq"
CONTAINER_ROOT = PurePosixPath("/app")
# Host dirs that may be bind-mounted, each onto the same relative path under /app.
ALLOWED_BIND_MOUNTS = {"./logs": "/app/logs", "./models": "/app/models", "./examples": "/app/examples"}


# ---------------------------------------------------------------- helpers


def _load_compose() -> dict:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _services_or_empty() -> dict:
    """For parametrizing at collection time; a broken compose file fails test_compose_parses."""
    try:
        services = _load_compose().get("services")
    except Exception:  # noqa: BLE001 - reported by test_compose_parses
        return {}
    return services if isinstance(services, dict) else {}


SERVICES = _services_or_empty()
BUILD_SERVICES = sorted(name for name, svc in SERVICES.items() if isinstance(svc, dict) and "build" in svc)
APP_SERVICES = sorted(name for name in SERVICES if name != BROKER)


def _service(name: str) -> dict:
    return _load_compose()["services"][name]


def _build(name: str) -> tuple[Path, Path]:
    """(context dir, Dockerfile path) of a service, both absolute."""
    build = _service(name)["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = (REPO_ROOT / build.get("context", ".")).resolve()
    dockerfile = context / build.get("dockerfile", "Dockerfile")
    return context, dockerfile


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with comments dropped and line continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    if pending:
        keyword, _, args = pending.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def _split_args(args: str) -> list[str]:
    """Arguments of an instruction, in exec (JSON) or shell form."""
    if args.startswith("["):
        return json.loads(args)
    return shlex.split(args)


def _copies(instructions: list[tuple[str, str]]) -> list[tuple[int, list[str], str]]:
    """[(index, sources, destination)] of the COPY/ADD instructions that read the build context."""
    copies = []
    for index, (keyword, args) in enumerate(instructions):
        if keyword not in ("COPY", "ADD"):
            continue
        parts = _split_args(args)
        flags = [p for p in parts if p.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue  # copies from another stage or image, not from the context
        paths = [p for p in parts if not p.startswith("--")]
        assert len(paths) >= 2, f"malformed {keyword}: {args}"
        copies.append((index, paths[:-1], paths[-1]))
    return copies


def _workdir(instructions: list[tuple[str, str]]) -> PurePosixPath | None:
    workdir = None
    for keyword, args in instructions:
        if keyword == "WORKDIR":
            path = PurePosixPath(args)
            workdir = path if path.is_absolute() or workdir is None else workdir / path
    return workdir


def _cmd(instructions: list[tuple[str, str]]) -> list[str]:
    cmds = [args for keyword, args in instructions if keyword == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    return _split_args(cmds[-1])


def _context_path(context: Path, source: str) -> Path:
    # Docker reads every COPY source relative to the context, even a leading "/".
    return context / source.lstrip("/")


def _service_dir(name: str) -> str:
    """The service's folder relative to the context: the folder holding its Dockerfile."""
    context, dockerfile = _build(name)
    return dockerfile.parent.relative_to(context).as_posix()


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _depends_on(svc: dict) -> dict:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):  # short form: no condition at all
        deps = {dep: {} for dep in deps}
    return deps


def _bind_mounts(svc: dict) -> list[tuple[str, str]]:
    """[(host path, container path)] of the service's bind mounts (named volumes skipped)."""
    mounts = []
    for volume in svc.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") != "bind":
                continue
            mounts.append((str(volume["source"]), str(volume["target"])))
        else:
            source, _, rest = str(volume).partition(":")
            if not rest or not source.startswith((".", "/", "~")):
                continue  # anonymous or named volume
            mounts.append((source, rest.split(":")[0]))
    return mounts


def _published(svc: dict) -> list[tuple[str, str]]:
    """[(host port, container port)] of the service's published ports."""
    published = []
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            published.append((str(port.get("published", "")), str(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        container = parts[-1]
        host = parts[-2] if len(parts) >= 2 else ""
        published.append((host, container))
    return published


def _dockerignore_patterns() -> list[str]:
    if not DOCKERIGNORE_FILE.exists():
        return []
    patterns = []
    for raw in DOCKERIGNORE_FILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops path or one of its parent folders (last matching pattern wins)."""
    parts = PurePosixPath(path.lstrip("/")).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        variants = {pat}
        while pat.startswith("**/"):
            pat = pat[3:]
            variants.add(pat)
        hit = any(fnmatch.fnmatchcase(c, v) for c in candidates for v in variants)
        if not hit and any("**/" in v for v in variants):
            # "**/x" also matches x at any depth
            hit = any(fnmatch.fnmatchcase(c, v.replace("**/", "*/")) for c in candidates for v in variants)
        if hit:
            ignored = not negate
    return ignored


build_services = pytest.mark.parametrize("name", BUILD_SERVICES)
app_services = pytest.mark.parametrize("name", APP_SERVICES)


# ---------------------------------------------------------------- compose file


def test_compose_parses():
    compose = _load_compose()
    assert isinstance(compose, dict), "docker-compose.yml is not a mapping"
    assert "version" not in compose, "compose spec files have no `version:` key"
    services = compose.get("services")
    assert isinstance(services, dict) and services, "no services in docker-compose.yml"
    assert BROKER in services, f"no `{BROKER}` service"
    assert BUILD_SERVICES, "no service is built from this repo"


def test_rabbitmq_has_healthcheck():
    healthcheck = _service(BROKER).get("healthcheck")
    assert healthcheck, f"{BROKER} has no healthcheck, so service_healthy can never be met"
    test = healthcheck.get("test")
    command = " ".join(test) if isinstance(test, list) else str(test)
    assert "rabbitmq-diagnostics" in command and "ping" in command, f"unexpected healthcheck: {command}"
    assert not healthcheck.get("disable"), "healthcheck disabled"


@app_services
def test_depends_on_healthy_rabbitmq(name):
    deps = _depends_on(_service(name))
    assert BROKER in deps, f"{name} does not depend on {BROKER}"
    condition = (deps[BROKER] or {}).get("condition")
    assert condition == "service_healthy", f"{name} waits for {BROKER} with condition {condition!r}, not service_healthy"


def test_model_waits_for_trained_model():
    deps = _depends_on(_service("model"))
    assert "learn_model" in deps, "model does not depend on learn_model"
    condition = (deps["learn_model"] or {}).get("condition")
    assert condition == "service_completed_successfully", f"model waits for learn_model with {condition!r}"


def test_learn_model_restarts_only_on_failure():
    restart = _service("learn_model").get("restart")
    assert restart == "on-failure", f"learn_model restart is {restart!r}; it trains once and must exit 0 for good"


@app_services
def test_bind_mounts_are_logs_or_models_under_app(name):
    for host, container in _bind_mounts(_service(name)):
        host = host.rstrip("/")
        assert host in ALLOWED_BIND_MOUNTS, f"{name} mounts {host}; only {sorted(ALLOWED_BIND_MOUNTS)} are expected"
        container = container.rstrip("/")
        assert PurePosixPath(container).is_relative_to(CONTAINER_ROOT), f"{name} mounts onto {container}, not under /app"
        assert container == ALLOWED_BIND_MOUNTS[host], (
            f"{name} mounts {host} onto {container}; the services use the relative path, so it must be "
            f"{ALLOWED_BIND_MOUNTS[host]}"
        )


@app_services
def test_amqp_url_points_at_a_compose_service(name):
    url = _env(_service(name)).get("AMQP_URL")
    if url is None:
        pytest.skip(f"{name} sets no AMQP_URL")
    host = urlparse(url).hostname
    assert host in SERVICES, f"{name}: AMQP_URL host {host!r} is not a compose service (localhost won't work in a container)"


@app_services
def test_metrics_port_is_published(name):
    port = _env(_service(name)).get("METRICS_PORT", "0")
    if port in ("", "0"):
        pytest.skip(f"{name} has no metrics port")
    assert (port, port) in _published(_service(name)), f"{name}: METRICS_PORT {port} is not published as {port}:{port}"


def test_host_ports_are_unique():
    seen: dict[str, str] = {}
    for name, svc in SERVICES.items():
        for host, _ in _published(svc):
            if not host:
                continue
            assert host not in seen, f"host port {host} published by both {seen[host]} and {name}"
            seen[host] = name


# ---------------------------------------------------------------- Dockerfiles


@build_services
def test_build_context_and_dockerfile_exist(name):
    context, dockerfile = _build(name)
    assert context.is_dir(), f"{name}: build context {context} does not exist"
    assert dockerfile.is_file(), f"{name}: Dockerfile {dockerfile} does not exist"


@build_services
def test_copy_sources_exist(name):
    context, dockerfile = _build(name)
    copies = _copies(_instructions(dockerfile))
    assert copies, f"{name}: Dockerfile copies nothing"
    for _, sources, _ in copies:
        for source in sources:
            if any(ch in source for ch in "*?["):
                assert list(context.glob(source.lstrip("/"))), f"{name}: COPY {source} matches nothing"
            else:
                assert _context_path(context, source).exists(), f"{name}: COPY source {source} not in {context}"


@build_services
def test_copy_sources_not_dockerignored(name):
    context, dockerfile = _build(name)
    patterns = _dockerignore_patterns()
    for _, sources, _ in _copies(_instructions(dockerfile)):
        for source in sources:
            assert not _ignored(source, patterns), f"{name}: COPY {source} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out():
    patterns = _dockerignore_patterns()
    for path in (".git", ".venv", "logs", "models", "common/__pycache__", ".pytest_cache"):
        assert _ignored(path, patterns), f".dockerignore lets {path} into the build context"


@build_services
def test_workdir_is_app(name):
    _, dockerfile = _build(name)
    assert _workdir(_instructions(dockerfile)) == CONTAINER_ROOT, f"{name}: WORKDIR must be /app (mirrors the repo root)"


@build_services
def test_cmd_runs_existing_script_unbuffered(name):
    context, dockerfile = _build(name)
    instructions = _instructions(dockerfile)
    cmd = _cmd(instructions)
    assert cmd[0].startswith("python"), f"{name}: CMD does not run python: {cmd}"
    scripts = [arg for arg in cmd if arg.endswith(".py")]
    assert len(scripts) == 1, f"{name}: CMD names no single .py script: {cmd}"
    script = scripts[0]
    assert "-u" in cmd[1 : cmd.index(script)], f"{name}: CMD lacks -u before the script (unbuffered logs): {cmd}"

    # WORKDIR /app mirrors the repo root, so the script is there relative to the context...
    assert (context / script).is_file(), f"{name}: CMD script {script} does not exist in the repo"
    # ...and some COPY actually puts it at /app/<script> in the image.
    target = CONTAINER_ROOT / script
    workdir = _workdir(instructions) or PurePosixPath("/")
    covered = False
    for _, sources, dest in _copies(instructions):
        dest_path = PurePosixPath(dest) if dest.startswith("/") else workdir / dest
        for source in sources:
            src = source.lstrip("/").rstrip("/")
            if target == dest_path:
                covered = True  # file copied onto the exact path
            elif target.is_relative_to(dest_path) and (context / src).is_dir():
                rel = target.relative_to(dest_path).as_posix()
                covered |= (context / src / rel).is_file()
    assert covered, f"{name}: no COPY puts {script} at {target}"


@build_services
def test_requirements_installed_before_code_is_copied(name):
    _, dockerfile = _build(name)
    svc_dir = _service_dir(name)
    instructions = _instructions(dockerfile)
    copies = _copies(instructions)
    requirements = f"{svc_dir}/requirements.txt"

    def copy_index(source: str) -> int:
        hits = [i for i, sources, _ in copies if any(s.strip("/") == source for s in sources)]
        assert hits, f"{name}: Dockerfile does not COPY {source}"
        return hits[0]

    installs = [
        i
        for i, (keyword, args) in enumerate(instructions)
        if keyword == "RUN" and "pip install" in args and requirements in args
    ]
    assert installs, f"{name}: no RUN pip install -r {requirements}"
    install = installs[0]

    assert copy_index("common") < install, f"{name}: common/ must be copied before pip install (-e ./common)"
    assert copy_index(requirements) < install, f"{name}: {requirements} must be copied before pip install"
    assert install < copy_index(f"{svc_dir}/src"), (
        f"{name}: {svc_dir}/src is copied before pip install, so every code edit reinstalls the dependencies"
    )


@build_services
def test_requirements_install_common(name):
    context, _ = _build(name)
    requirements = context / _service_dir(name) / "requirements.txt"
    assert requirements.is_file(), f"{name}: {requirements} does not exist"
    lines = [line.strip() for line in requirements.read_text(encoding="utf-8").splitlines()]
    assert "-e ./common" in lines, f"{name}: {requirements} lacks `-e ./common`"
