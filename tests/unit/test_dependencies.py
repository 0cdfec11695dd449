"""The locks pin every dependency, transitive ones included, with hashes, and are what gets installed.

requirements.lock (the venv: every service plus the dev tools) and <service>/requirements.lock (its
image) are written by `make lock` from the requirements files. These checks fail when a requirements
file asks for something its lock doesn't pin, when a lock leaves a dependency of a pinned package
out, when the locks disagree, or when the Makefile stops installing the lock with its hashes.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_LOCK = REPO_ROOT / "requirements.lock"
SERVICE_REQUIREMENTS = sorted(REPO_ROOT.glob("*/requirements.txt"))
SERVICES = [path.parent.name for path in SERVICE_REQUIREMENTS]
BUILD_REQUIREMENTS = REPO_ROOT / "requirements-build.txt"
OTHER_REQUIREMENTS = [REPO_ROOT / "requirements-dev.txt", BUILD_REQUIREMENTS]
COMMON = "mlmonitor"


class Pin:
    def __init__(self, version: str, hashes: list[str]):
        self.version, self.hashes = version, hashes


def requirements(path: Path) -> list[Requirement]:
    """The packages a requirements file asks for (options such as -e ./common and -r left out)."""
    found = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate():
            found.append(requirement)
    return found


def common_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "common" / "pyproject.toml").read_text(encoding="utf-8"))
    return [Requirement(line) for line in project["project"]["dependencies"]]


def common_build_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "common" / "pyproject.toml").read_text(encoding="utf-8"))
    return [Requirement(line) for line in project["build-system"]["requires"]]


def lock_entries(path: Path) -> list[str]:
    """The lock's entries, each with its continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    return [line.split(" #")[0].strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def pins(path: Path) -> dict[str, Pin]:
    found = {}
    for entry in lock_entries(path):
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", entry)
        assert match, f"{path.name}: not a name==version pin with sha256 hashes: {entry[:120]}"
        name, version, hashes = match.groups()
        found[canonicalize_name(name)] = Pin(version, re.findall(r"[0-9a-f]{64}", hashes))
    return found


def assert_satisfied(requirement: Requirement, locked: dict[str, Pin], lock: Path, source: str) -> None:
    pin = locked.get(canonicalize_name(requirement.name))
    assert pin is not None, (
        f"{source} asks for {requirement.name}, which {lock.relative_to(REPO_ROOT)} doesn't pin: run make lock"
    )
    assert requirement.specifier.contains(pin.version, prereleases=True), (
        f"{source} asks for {requirement}, {lock.relative_to(REPO_ROOT)} pins {pin.version}: run make lock"
    )


def service_lock(service: str) -> Path:
    return REPO_ROOT / service / "requirements.lock"


def relative(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


ALL_LOCKS = [VENV_LOCK] + [service_lock(service) for service in SERVICES]
service_names = pytest.mark.parametrize("service", SERVICES)


def test_there_are_services_and_locks():
    assert {"learn_model", "features", "model", "metric", "plot", "dashboard"} <= set(SERVICES)
    assert VENV_LOCK.is_file(), "requirements.lock missing: run make lock"


@pytest.mark.parametrize("lock", ALL_LOCKS, ids=relative)
def test_every_lock_entry_is_an_exact_pin_with_hashes(lock):
    assert lock.is_file(), f"{lock.relative_to(REPO_ROOT)} missing: run make lock"
    locked = pins(lock)  # fails on anything but name==version --hash=sha256:... (editables, URLs, options)
    assert locked, f"{lock.name} pins nothing"
    for name, pin in locked.items():
        assert pin.hashes, f"{lock.relative_to(REPO_ROOT)}: {name}=={pin.version} has no hash"
    assert COMMON not in locked, f"{lock.name} pins {COMMON}, which is installed from common/ after the lock"


@pytest.mark.parametrize("path", SERVICE_REQUIREMENTS + OTHER_REQUIREMENTS, ids=relative)
def test_venv_lock_pins_every_requirement(path):
    locked = pins(VENV_LOCK)
    for requirement in requirements(path):
        assert_satisfied(requirement, locked, VENV_LOCK, path.relative_to(REPO_ROOT).as_posix())


@service_names
def test_service_lock_pins_its_requirements_commons_and_the_build_backend(service):
    lock = service_lock(service)
    locked = pins(lock)
    wanted = [(r, f"{service}/requirements.txt") for r in requirements(REPO_ROOT / service / "requirements.txt")]
    wanted += [(r, "common/pyproject.toml") for r in common_requirements()]
    wanted += [(r, "requirements-build.txt") for r in requirements(BUILD_REQUIREMENTS)]
    for requirement, source in wanted:
        assert_satisfied(requirement, locked, lock, source)


@pytest.mark.parametrize("lock", ALL_LOCKS, ids=relative)
def test_locked_setuptools_can_build_common(lock):
    # common/ is installed with --no-build-isolation: its build backend must be in every lock.
    locked = pins(lock)
    for requirement in common_build_requirements():
        assert_satisfied(requirement, locked, lock, "common/pyproject.toml [build-system]")


@service_names
def test_service_lock_agrees_with_the_venv_lock(service):
    venv = pins(VENV_LOCK)
    for name, pin in pins(service_lock(service)).items():
        assert name in venv, f"{service}/requirements.lock pins {name}, requirements.lock doesn't: run make lock"
        assert (pin.version, sorted(pin.hashes)) == (venv[name].version, sorted(venv[name].hashes)), (
            f"{service}/requirements.lock and requirements.lock disagree on {name}: run make lock"
        )


@pytest.mark.parametrize("lock", ALL_LOCKS, ids=relative)
def test_lock_holds_every_dependency_of_what_it_pins(lock):
    """Transitive closure, read from the metadata of the packages installed in this venv (from the lock)."""
    locked = pins(lock)
    for name in locked:
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} from {lock.relative_to(REPO_ROOT)} is not installed in this venv: make .venv/.installed")
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue  # an extra, or another platform's
            assert canonicalize_name(requirement.name) in locked, (
                f"{lock.relative_to(REPO_ROOT)} pins {name} but not its dependency {requirement}: run make lock"
            )


# ---------------------------------------------------------------- Makefile


def recipe(target: str) -> str:
    """The recipe of a Makefile target, continuation lines joined."""
    text = (REPO_ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    match = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n?)*)", text, re.MULTILINE)
    assert match, f"Makefile has no target {target}"
    return match.group(1)


def test_make_installs_the_lock_with_hashes_then_common_without_deps():
    install = recipe("$(VENV)/.installed")
    lines = [line.strip() for line in install.splitlines() if "pip install" in line]
    assert len(lines) == 2, f"expected the lock, then common: {lines}"
    lock, common = lines
    assert "--require-hashes" in lock and "-r $(LOCK)" in lock, f"the lock isn't installed with its hashes: {lock}"
    assert all(flag in common for flag in ("--no-deps", "--no-build-isolation", "--no-index", "-e ./common")), (
        f"common must be installed alone, from the locked setuptools, fetching nothing: {common}"
    )
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^LOCK := requirements\.lock$", makefile, re.MULTILINE)
    assert "requirements.txt)" not in install and "requirements-dev.txt" not in install, "make installs unpinned files"


def test_make_lock_regenerates_every_lock_with_hashes():
    lock = recipe("lock")
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    compile_command = re.search(r"^PIP_COMPILE = (.*)$", makefile, re.MULTILINE)
    assert compile_command and "--generate-hashes" in compile_command.group(1), "make lock writes no hashes"
    assert "--output-file $(LOCK) $(REQUIREMENTS) requirements-build.txt requirements-dev.txt" in lock
    assert "$$service/requirements.lock" in lock and "--constraint $(LOCK)" in lock


def test_make_test_runs_the_security_lint_before_pytest_over_all_our_code():
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^test: .*\blint\b", makefile, re.MULTILINE), "make test doesn't run lint first"
    lint = recipe("lint")
    assert "bandit" in lint and "--severity-level medium" in lint and "--configfile bandit.yaml" in lint, lint
    assert re.search(r"^LINTED := \$\(wildcard \*/src\) scripts$", makefile, re.MULTILINE), "lint misses a src folder"


def test_every_skipped_bandit_check_says_why():
    import yaml

    config_text = (REPO_ROOT / "bandit.yaml").read_text(encoding="utf-8")
    skips = yaml.safe_load(config_text).get("skips", [])
    for skip in skips:
        line = next(line for line in config_text.splitlines() if line.strip().startswith(f"- {skip}"))
        assert re.search(r"#\s*\S.{10,}", line), f"bandit.yaml skips {skip} without a reason on its line"
