"""Static checks of docker-compose.yml, the Dockerfile and .dockerignore.

There is no Docker engine where the tests run, so this reads the files and checks what a
`docker compose up --build` would trip over: missing build inputs, a layer order that
reinstalls dependencies on every code or common/ edit, volumes that don't land on the relative
logs/ and models/ paths under WORKDIR /app, a start order that doesn't wait for RabbitMQ or for
the trained model; and what would let a container do more than it must: root, a writable root
filesystem or mount it only reads, capabilities, unpinned or unhashed dependencies; and broker
credentials: no guest, no committed password, each service's URL a Docker secret of its own, the
broker's users and topology loaded from definitions.

Everything is driven by the services found in the compose file, so a service added later
(e.g. dashboard) is checked the same way. The one Dockerfile takes the service as the build
argument SERVICE; its instructions are read with the compose file's build args substituted.
"""

from __future__ import annotations

import fnmatch
import json
import re
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
# Who may write each of them (drift keeps its state and alerts in logs/); every other service mounts it read-only.
WRITERS = {"./models": {"learn_model"}, "./logs": {"metric", "plot", "drift"}, "./examples": set()}
ROOT_DOCKERFILE = REPO_ROOT / "Dockerfile"
SERVICE_ARG = "SERVICE"
UNPRIVILEGED_UID_MIN = 1000  # below: root and the distribution's system users


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
# Every service built from this repo talks to RabbitMQ, except learn_model, which only trains.
BROKER_CLIENTS = sorted(name for name in BUILD_SERVICES if name != "learn_model")


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


def _build_args(name: str) -> dict[str, str]:
    build = _service(name)["build"]
    args = build.get("args") if isinstance(build, dict) else None
    if isinstance(args, list):
        args = dict(item.split("=", 1) for item in args)
    return {str(k): str(v) for k, v in (args or {}).items()}


_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def _substitute(text: str, variables: dict[str, str]) -> str:
    """$NAME and ${NAME} replaced as docker build does; an unknown one is left as it is."""
    return _VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


def _interpolate(value: str) -> str:
    """A compose value with ${VAR:-default} read as its default (no environment given)."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _image(name: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The service's Dockerfile instructions with ARG/ENV values substituted, and the image's ENV."""
    _, dockerfile = _build(name)
    build_args = _build_args(name)
    variables: dict[str, str] = {}
    env: dict[str, str] = {}
    expanded = []
    for keyword, args in _instructions(dockerfile):
        if keyword == "ARG":
            arg, _, default = args.partition("=")
            variables[arg] = build_args.get(arg, default)
        elif keyword == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = variables[key] = _substitute(value, variables)
        if keyword not in ("CMD", "ENTRYPOINT"):  # exec form isn't substituted at build time
            args = _substitute(args, variables)
        expanded.append((keyword, args))
    return expanded, env


def _command(name: str) -> list[str]:
    """The argv the container starts, `sh -c "exec ..."` unwrapped with the image's ENV."""
    instructions, env = _image(name)
    cmd = _cmd(instructions)
    if cmd[:2] == ["sh", "-c"]:
        cmd = shlex.split(_substitute(cmd[2], env))
        if cmd and cmd[0] == "exec":
            cmd = cmd[1:]
    return cmd


def _user_ids(user: str) -> tuple[int, int]:
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), f"user {user!r} is not numeric uid:gid (a name may resolve to root)"
    return int(uid), int(gid)


def _pip_installs(instructions: list[tuple[str, str]]) -> list[tuple[int, list[str]]]:
    """[(index, argv after `pip install`)] of every pip install a RUN does."""
    installs = []
    for index, (keyword, args) in enumerate(instructions):
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", args):
            words = shlex.split(command)
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    installs.append((index, words[i + 2:]))
    return installs


def _option_values(argv: list[str], option: str) -> list[str]:
    values = []
    for i, word in enumerate(argv):
        if word == option and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif word.startswith(option + "="):
            values.append(word.split("=", 1)[1])
    return values


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


def _published_addresses(svc: dict) -> list[str]:
    """The host address each published port binds to ("" = every interface)."""
    addresses = []
    for port in svc.get("ports") or []:
        if isinstance(port, dict):
            addresses.append(str(port.get("host_ip", "")))
            continue
        parts = str(port).split("/")[0].split(":")
        addresses.append(":".join(parts[:-2]))
    return addresses


def _tmpfs_targets(svc: dict) -> list[str]:
    tmpfs = svc.get("tmpfs") or []
    if isinstance(tmpfs, str):
        tmpfs = [tmpfs]
    return [str(entry).split(":")[0].rstrip("/") for entry in tmpfs]


def _read_only_binds(svc: dict) -> dict[str, bool]:
    """{host path: mounted read-only} of the service's bind mounts."""
    modes = {}
    for volume in svc.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                modes[str(volume["source"]).rstrip("/")] = bool(volume.get("read_only"))
            continue
        parts = str(volume).split(":")
        if len(parts) >= 2 and parts[0].startswith((".", "/", "~")):
            options = parts[2].split(",") if len(parts) > 2 else []
            modes[parts[0].rstrip("/")] = "ro" in options
    return modes


def _secrets_of(name: str) -> dict[str, str]:
    """{secret: where the container finds it} of a service's secrets (short or long syntax)."""
    found = {}
    for secret in _service(name).get("secrets") or []:
        if isinstance(secret, dict):
            target = str(secret.get("target") or secret["source"])
            found[str(secret["source"])] = target if target.startswith("/") else f"/run/secrets/{target}"
        else:
            found[str(secret)] = f"/run/secrets/{secret}"
    return found


def _broker_mounts() -> dict[str, str]:
    """{path in the broker's container: file in the repo} of its configs and secrets."""
    compose = _load_compose()
    mounts = {}
    for kind in ("configs", "secrets"):
        for entry in _service(BROKER).get(kind) or []:
            source = entry["source"] if isinstance(entry, dict) else entry
            target = entry.get("target", f"/{source}") if isinstance(entry, dict) else f"/{source}"
            mounts[str(target)] = compose[kind][source]["file"]
    return mounts


def _rabbitmq_settings() -> dict[str, str]:
    """key = value of every config file mounted into the broker's /etc/rabbitmq/conf.d."""
    conf_d = [file for target, file in _broker_mounts().items()
              if PurePosixPath(target).parent == PurePosixPath("/etc/rabbitmq/conf.d")]
    assert conf_d, f"{BROKER}: no config mounted into /etc/rabbitmq/conf.d"
    settings = {}
    for file in conf_d:
        for line in (REPO_ROOT / file).read_text(encoding="utf-8").splitlines():
            key, _, value = line.split("#")[0].partition("=")
            if value.strip():
                settings[key.strip()] = value.strip()
    return settings


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
def test_no_amqp_url_carries_a_password_or_guest(name):
    env = _env(_service(name))
    url = env.get("AMQP_URL")
    if url is not None:
        assert urlparse(_interpolate(url)).password is None, f"{name}: a password in AMQP_URL, committed"
    assert not any("guest" in value for value in env.values()), f"{name}: guest in its environment"


@pytest.mark.parametrize("name", BROKER_CLIENTS)
def test_broker_client_reads_its_url_from_its_own_docker_secret(name):
    secret = f"{name}_amqp_url"
    env = _env(_service(name))
    assert "AMQP_URL" not in env, f"{name}: AMQP_URL and AMQP_URL_FILE together are refused at start"
    assert env.get("AMQP_URL_FILE") == f"/run/secrets/{secret}", f"{name}: AMQP_URL_FILE is not its secret"
    assert _secrets_of(name) == {secret: f"/run/secrets/{secret}"}, f"{name} gets secrets not its own"
    declared = (_load_compose().get("secrets") or {}).get(secret) or {}
    assert declared.get("file") == f"./secrets/{name}.amqp_url", f"{secret}: not read from ./secrets/{name}.amqp_url"
    holders = [other for other in SERVICES if secret in _secrets_of(other)]
    assert holders == [name], f"{secret} is given to {holders}"


def test_learn_model_gets_no_broker_credentials():
    assert not {"AMQP_URL", "AMQP_URL_FILE"} & set(_env(_service("learn_model"))), "learn_model uses no broker"
    assert _secrets_of("learn_model") == {}


def test_the_documented_users_command_gives_the_containers_the_brokers_host():
    commands = [line for line in COMPOSE_FILE.read_text(encoding="utf-8").splitlines()
                if line.startswith("#") and "scripts/rabbitmq_users.py" in line]
    assert commands, "docker-compose.yml does not say how to create the broker users"
    words = shlex.split(commands[0].lstrip("# "))
    assert _option_values(words, "--host") == [BROKER], f"{commands[0]}: the URLs must name {BROKER}"
    assert _option_values(words, "--definitions") == ["secrets/rabbitmq_users.json"]


def test_rabbitmq_loads_its_users_and_topology_from_definitions_without_guest():
    settings = _rabbitmq_settings()
    directory = PurePosixPath(settings.get("load_definitions", ""))
    mounts = _broker_mounts()
    loaded = {target: file for target, file in mounts.items() if PurePosixPath(target).parent == directory}
    assert sorted(PurePosixPath(target).name for target in loaded) == ["10-topology.json", "20-users.json"], (
        f"{BROKER}: load_definitions = {directory}, into which are mounted {sorted(loaded)}")
    topology = loaded[str(directory / "10-topology.json")]
    assert (REPO_ROOT / topology).is_file() and not topology.startswith("./secrets/")
    assert "users" not in json.loads((REPO_ROOT / topology).read_text(encoding="utf-8")), "users committed"
    assert loaded[str(directory / "20-users.json")] == "./secrets/rabbitmq_users.json"
    assert "default_user" not in settings and "default_pass" not in settings


def test_secrets_are_git_ignored():
    ignored = [line.strip() for line in (REPO_ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()]
    assert "secrets/" in ignored or "secrets" in ignored or "/secrets/" in ignored, ".gitignore lets secrets/ in"
    for path in (COMPOSE_FILE, REPO_ROOT / "rabbitmq" / "definitions.json", REPO_ROOT / "rabbitmq" / "rabbitmq.conf"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"amqps?://[^:/@\s]+:[^@\s]+@", text), f"{path.name}: an AMQP URL with a password"
        assert "password_hash" not in text, f"{path.name}: a password hash"


def _replicated(svc: dict) -> bool:
    return "replicas" in (svc.get("deploy") or {})


@app_services
def test_metrics_port_is_published(name):
    port = _env(_service(name)).get("METRICS_PORT", "0")
    if port in ("", "0"):
        pytest.skip(f"{name} has no metrics port")
    if _replicated(_service(name)):
        pytest.skip(f"{name} runs as replicas: Prometheus scrapes each on the compose network")
    assert (port, port) in _published(_service(name)), f"{name}: METRICS_PORT {port} is not published as {port}:{port}"


def test_model_runs_as_model_replicas_replicas_one_by_default():
    replicas = str(_service("model")["deploy"]["replicas"])
    assert "MODEL_REPLICAS" in replicas and _interpolate(replicas) == "1", f"model: deploy.replicas is {replicas!r}"


@pytest.mark.parametrize("name", sorted(name for name, svc in SERVICES.items() if _replicated(svc)))
def test_nothing_stops_a_replicated_service_from_running_twice(name):
    svc = _service(name)
    assert "container_name" not in svc and "hostname" not in svc, f"{name}: a fixed name can't be given to two replicas"
    fixed = [host for host, _ in _published(svc) if host and "-" not in host]
    assert not fixed, f"{name} publishes host port(s) {fixed}: a second replica could not bind them"


def test_host_ports_are_unique():
    seen: dict[str, str] = {}
    for name, svc in SERVICES.items():
        for host, _ in _published(svc):
            if not host:
                continue
            assert host not in seen, f"host port {host} published by both {seen[host]} and {name}"
            seen[host] = name


# ---------------------------------------------------------------- compose: least privilege


@build_services
def test_service_runs_as_the_images_unprivileged_user(name):
    user = _service(name).get("user")
    assert user, f"{name} sets no user; compose must not rely on the image alone"
    uid, gid = _user_ids(_interpolate(str(user)))
    assert uid >= UNPRIVILEGED_UID_MIN and gid >= UNPRIVILEGED_UID_MIN, f"{name} runs as {uid}:{gid}, a privileged id"
    instructions, _ = _image(name)
    image_user = [args for keyword, args in instructions if keyword == "USER"][-1]
    assert (uid, gid) == _user_ids(image_user), f"{name}: compose's default user {uid}:{gid} is not the image's {image_user}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_has_no_capabilities_and_cannot_gain_privileges(name):
    svc = _service(name)
    assert "ALL" in (svc.get("cap_drop") or []), f"{name} keeps the default capabilities (cap_drop: [ALL])"
    assert not svc.get("cap_add"), f"{name} adds capabilities back: {svc['cap_add']}"
    assert not svc.get("privileged"), f"{name} is privileged"
    assert "no-new-privileges:true" in (svc.get("security_opt") or []), f"{name} lacks no-new-privileges:true"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_nothing_runs_as_root(name):
    user = _service(name).get("user")
    if user is None:
        image = _service(name).get("image", "")
        assert image.startswith("prom/prometheus:"), f"{name} sets no user, so it may run as root"
        pytest.skip("prom/prometheus runs as nobody by its own USER")
    uid = _interpolate(str(user)).partition(":")[0]
    assert uid not in ("0", "root", ""), f"{name} runs as root"


@build_services
def test_root_filesystem_is_read_only_with_a_tmpfs_for_tmp(name):
    svc = _service(name)
    assert svc.get("read_only") is True, f"{name}: root filesystem not read_only"
    assert "/tmp" in _tmpfs_targets(svc), f"{name}: read-only root filesystem without a tmpfs on /tmp"


def test_prometheus_root_filesystem_is_read_only():
    assert _service("prometheus").get("read_only") is True, "prometheus writes only its VOLUME /prometheus"


@app_services
def test_bind_mounts_are_writable_only_by_their_writers(name):
    for host, read_only in _read_only_binds(_service(name)).items():
        if name in WRITERS.get(host, set()):
            assert not read_only, f"{name} writes {host} but mounts it read-only"
        else:
            assert read_only, f"{name} only reads {host} but mounts it writable (add :ro)"


@pytest.mark.parametrize("name, host", [("model", "./models"), ("dashboard", "./models"), ("dashboard", "./logs")])
def test_consumers_mount_what_they_read_read_only(name, host):
    modes = _read_only_binds(_service(name))
    assert host in modes, f"{name} doesn't mount {host}, which it reads"
    assert modes[host], f"{name} mounts {host} writable"


def test_matplotlib_cache_is_on_a_tmpfs():
    svc = _service("plot")
    config_dir = _env(svc).get("MPLCONFIGDIR", "")
    assert any(PurePosixPath(config_dir).is_relative_to(t) for t in _tmpfs_targets(svc)), (
        f"plot: MPLCONFIGDIR {config_dir!r} is not on a tmpfs, and the root filesystem is read-only"
    )


@app_services
def test_metrics_listen_on_the_compose_network(name):
    env = _env(_service(name))
    if env.get("METRICS_PORT", "0") in ("", "0"):
        pytest.skip(f"{name} has no metrics port")
    # The services listen on 127.0.0.1 unless told otherwise: Prometheus and the dashboard couldn't scrape.
    assert env.get("METRICS_HOST") == "0.0.0.0", f"{name}: METRICS_HOST must be 0.0.0.0 in a container"


def test_dashboard_listens_on_the_compose_network():
    assert _env(_service("dashboard")).get("DASHBOARD_HOST") == "0.0.0.0", "dashboard: DASHBOARD_HOST must be 0.0.0.0"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_ports_are_published_on_the_hosts_loopback_only(name):
    for address in _published_addresses(_service(name)):
        assert address == "127.0.0.1", f"{name} publishes a port on {address or 'every interface'}, not 127.0.0.1"


def test_rabbitmq_refuses_huge_messages_itself():
    from mlmonitor.settings import ConsumerSettings

    settings = _rabbitmq_settings()
    assert "max_message_size" in settings, f"{BROKER}: max_message_size not set in /etc/rabbitmq/conf.d"
    broker_cap = int(settings["max_message_size"])
    field = ConsumerSettings.model_fields.get("max_message_bytes")
    service_cap = field.default if field is not None else 1 << 20
    # Above the services' own cap, so a message between the two is dead-lettered with its reason;
    # at most RabbitMQ's own limit of 512 MiB.
    assert service_cap < broker_cap <= 512 << 20, f"max_message_size {broker_cap} vs MAX_MESSAGE_BYTES {service_cap}"


# ---------------------------------------------------------------- Dockerfile


def test_no_service_folder_keeps_a_dockerfile_of_its_own():
    own = sorted(path.relative_to(REPO_ROOT).as_posix() for path in REPO_ROOT.glob("*/Dockerfile"))
    assert not own, f"{own}: the root Dockerfile builds every service (build.args.SERVICE in docker-compose.yml)"


@build_services
def test_service_is_built_by_the_root_dockerfile_for_itself(name):
    context, dockerfile = _build(name)
    assert (context, dockerfile) == (REPO_ROOT, ROOT_DOCKERFILE), f"{name} is built from {dockerfile}, context {context}"
    assert _build_args(name).get(SERVICE_ARG) == name, f"{name}: build.args.{SERVICE_ARG} must be {name!r}"
    assert (REPO_ROOT / name / "src" / f"{name}.py").is_file(), f"{name}: no {name}/src/{name}.py"


@build_services
def test_build_context_and_dockerfile_exist(name):
    context, dockerfile = _build(name)
    assert context.is_dir(), f"{name}: build context {context} does not exist"
    assert dockerfile.is_file(), f"{name}: Dockerfile {dockerfile} does not exist"


@build_services
def test_copy_sources_exist(name):
    context, _ = _build(name)
    instructions, _ = _image(name)
    copies = _copies(instructions)
    assert copies, f"{name}: Dockerfile copies nothing"
    for _, sources, _ in copies:
        for source in sources:
            assert "$" not in source, f"{name}: COPY {source} names a variable the build doesn't set"
            if any(ch in source for ch in "*?["):
                assert list(context.glob(source.lstrip("/"))), f"{name}: COPY {source} matches nothing"
            else:
                assert _context_path(context, source).exists(), f"{name}: COPY source {source} not in {context}"


@build_services
def test_copy_sources_not_dockerignored(name):
    patterns = _dockerignore_patterns()
    instructions, _ = _image(name)
    for _, sources, _ in _copies(instructions):
        for source in sources:
            assert not _ignored(source, patterns), f"{name}: COPY {source} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out():
    patterns = _dockerignore_patterns()
    for path in (".git", ".venv", "logs", "models", "common/__pycache__", ".pytest_cache", "secrets", ".env", "bench"):
        assert _ignored(path, patterns), f".dockerignore lets {path} into the build context"


@build_services
def test_workdir_is_app(name):
    instructions, _ = _image(name)
    assert _workdir(instructions) == CONTAINER_ROOT, f"{name}: WORKDIR must be /app (mirrors the repo root)"


@build_services
def test_cmd_runs_existing_script_unbuffered(name):
    context, _ = _build(name)
    instructions, _ = _image(name)
    cmd = _command(name)
    assert cmd and cmd[0].startswith("python"), f"{name}: CMD does not run python: {cmd}"
    scripts = [arg for arg in cmd if arg.endswith(".py")]
    assert len(scripts) == 1, f"{name}: CMD names no single .py script: {cmd}"
    script = scripts[0]
    assert script == f"{name}/src/{name}.py", f"{name}: CMD runs {script}"
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
def test_image_runs_as_an_unprivileged_user_that_owns_nothing(name):
    instructions, _ = _image(name)
    users = [(i, args) for i, (keyword, args) in enumerate(instructions) if keyword == "USER"]
    assert users, f"{name}: no USER, so the image runs as root"
    index, user = users[-1]
    uid, gid = _user_ids(user)
    assert uid >= UNPRIVILEGED_UID_MIN and gid >= UNPRIVILEGED_UID_MIN, f"{name}: USER {user} is privileged"
    assert any(keyword == "RUN" and f"--uid {uid}" in args for keyword, args in instructions[:index]), (
        f"{name}: uid {uid} is not created with useradd --uid"
    )
    # Files stay root's: nothing is handed to the user, so it can change none of them.
    for keyword, args in instructions:
        assert not (keyword in ("COPY", "ADD") and "--chown" in args), f"{name}: {keyword} {args} gives files away"
        assert not (keyword == "RUN" and re.search(r"\bch(own|mod)\b", args)), f"{name}: RUN {args} changes ownership"


@build_services
def test_dependencies_come_from_the_services_lock_with_hashes(name):
    instructions, _ = _image(name)
    lock = f"{name}/requirements.lock"
    assert (REPO_ROOT / lock).is_file(), f"{name}: {lock} missing; `make lock` writes it"
    from_lock = [(i, argv) for i, argv in _pip_installs(instructions) if lock in _option_values(argv, "-r")]
    assert from_lock, f"{name}: no RUN pip install -r {lock}"
    (lock_install, argv), *_ = from_lock
    assert "--require-hashes" in argv, f"{name}: the lock is installed without --require-hashes"
    assert ":all:" in _option_values(argv, "--only-binary"), f"{name}: sdists allowed, so a package's build code would run"
    for index, other in _pip_installs(instructions):
        if index == lock_install:
            continue
        # Anything else may only be our own code, with nothing resolved or fetched beside the lock.
        assert "--no-deps" in other and "--no-index" in other, f"{name}: pip install {other} may fetch unpinned packages"
        assert not _option_values(other, "-r"), f"{name}: pip install {other} reads another requirements file"


@build_services
def test_dependency_layer_comes_before_common_and_the_code(name):
    instructions, _ = _image(name)
    copies = _copies(instructions)
    lock = f"{name}/requirements.lock"
    install = next(i for i, argv in _pip_installs(instructions) if lock in _option_values(argv, "-r"))

    def copy_indexes(prefix: str) -> list[int]:
        return [i for i, sources, _ in copies if any(s.strip("/").startswith(prefix) for s in sources)]

    # Only the lock is copied before the install: editing common/ or any code keeps the layer cached.
    before = [sources for i, sources, _ in copies if i < install]
    assert before == [[lock]], f"{name}: copied before the dependency install: {before}; only {lock} may be"
    common, code = copy_indexes("common"), copy_indexes(f"{name}/src")
    assert common and code, f"{name}: common/ or {name}/src is never copied"
    assert install < min(common) and install < min(code), f"{name}: common/ or the code is copied before the lock install"
    common_installs = [i for i, argv in _pip_installs(instructions)
                       if any(a.rstrip("/") in ("./common", "common", "/app/common") for a in argv)]
    assert common_installs, f"{name}: common/ is never installed"
    assert max(common) < common_installs[0] < min(code), (
        f"{name}: common/ must be installed after it is copied, before the code"
    )


@build_services
def test_requirements_install_common(name):
    requirements = REPO_ROOT / name / "requirements.txt"
    assert requirements.is_file(), f"{name}: {requirements} does not exist"
    lines = [line.strip() for line in requirements.read_text(encoding="utf-8").splitlines()]
    assert "-e ./common" in lines, f"{name}: {requirements} lacks `-e ./common`"
