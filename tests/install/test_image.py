"""The control-plane image: the Dockerfile's shape, its pinned wheel set (image/requirements.txt) against
pyproject.toml and the tested environment, that wheel set installed from scratch and run as a non-root
user from a read-only install, and, where buildah, debootstrap and runc are installed and we are root
(`make test` installs them), the real image built by image/build.sh and run by runc: numeric non-root
user, read-only root filesystem, no capabilities, /tmp a tmpfs, serving xDS and /readyz."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from tests.harness.chart import REPO
from tests.harness.client import request
from tests.harness.dockerfile import DockerfileError, Instruction, parse_dockerfile
from tests.harness.polling import wait_until
from tests.harness.ports import free_port

pytestmark = pytest.mark.timeout(600)

USER = 65532
DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "image" / "requirements.txt"
BUILD_LOCK = REPO / "image" / "build-requirements.txt"
POLICIES = sorted((REPO / "examples" / "policies").glob("*.yaml"))


def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def stages(parsed: list[Instruction]) -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for instruction in parsed:
        if instruction.keyword == "FROM":
            out.append([])
        if out:
            out[-1].append(instruction)
    return out


def test_dockerfile_is_multi_stage_non_root_with_the_spillover_entrypoint() -> None:
    parsed = instructions()
    assert parsed[0].keyword == "ARG" and parsed[0].args.startswith("BASE_IMAGE="), "the base is a build argument"
    built = stages(parsed)
    assert len(built) >= 2, "multi-stage: the build tools stay out of the runtime image"
    runtime = built[-1]
    (user,) = [i.args for i in runtime if i.keyword == "USER"]
    assert user == f"{USER}:{USER}", "a numeric user, so that runAsNonRoot can check it"
    (entrypoint,) = [i for i in runtime if i.keyword == "ENTRYPOINT"]
    assert entrypoint.exec_form() == ["spillover"]
    # The runtime stage copies the environment from the build stage and runs nothing (no pip, no apt).
    assert [i.keyword for i in runtime if i.keyword == "RUN"] == []
    copies = [i for i in runtime if i.keyword == "COPY"]
    assert copies and all(c.args.startswith("--from=build ") for c in copies)
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "TMPDIR=/tmp" in env and "HOME=/tmp" in env
    # The wheel set is installed hash-checked, from the lock files.
    runs = " ".join(i.args for i in parsed if i.keyword == "RUN")
    assert "--require-hashes --no-deps --only-binary=:all: -r /src/image/requirements.txt" in runs
    assert "--require-hashes --no-deps --only-binary=:all: -r /src/image/build-requirements.txt" in runs
    assert "pip check" in runs


@pytest.mark.parametrize("text, message", [
    ("FROM a\nRUNN x\n", "unknown instruction 'RUNN'"),
    ("RUN x\nFROM a\n", "RUN before the first FROM"),
    ("FROM ${BASE}\n", "FROM uses $BASE"),
    ("FROM a AS one\nFROM b\nCOPY --from=two /x /y\n", "COPY --from=two"),
    ('FROM a\nENTRYPOINT ["spillover", 1]\n', "JSON array of strings"),
    ("FROM a\nRUN x \\\n", "ends inside a line continuation"),
])
def test_the_dockerfile_reader_rejects_what_a_builder_would(text: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=re.escape(message)):
        parse_dockerfile(text)


def test_dockerfile_copies_only_what_exists_and_the_build_context_admits() -> None:
    ignore = [line for line in (REPO / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", "the context starts empty and admits what the Dockerfile copies"
    admitted = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    for copy in [i for i in instructions() if i.keyword == "COPY" and not i.args.startswith("--from=")]:
        *sources, _destination = copy.args.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert source.rstrip("/") in admitted, f"{source} is excluded by .dockerignore"


def test_versions_agree_everywhere() -> None:
    """pyproject.toml's version is the package's, the chart's, the image label's and the image tag of
    manifests/ and of the chart's defaults."""
    import yaml

    import spillover

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert spillover.__version__ == version
    chart = yaml.safe_load((REPO / "charts" / "spillover" / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == version
    values = yaml.safe_load((REPO / "charts" / "spillover" / "values.yaml").read_text())
    assert values["image"]["repository"] == "ghcr.io/spillover-dev/spillover" and values["image"]["tag"] == ""
    controlplane = [d for d in yaml.safe_load_all((REPO / "manifests" / "controlplane.yaml").read_text())
                    if d and d["kind"] == "Deployment"]
    assert controlplane[0]["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"ghcr.io/spillover-dev/spillover:{version}")
    labels = " ".join(i.args for i in instructions() if i.keyword == "LABEL")
    assert f'org.opencontainers.image.version="{version}"' in labels
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"## [{version}]" in changelog


def _lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==(\S+) \\$", line):
            pins[m.group(1)] = m.group(2)
    return pins


def test_the_lock_is_pyprojects_runtime_closure_at_the_tested_versions() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = _lock(LOCK)
    text = LOCK.read_text()
    assert all(f"{name}=={version} \\\n    --hash=sha256:" in text for name, version in pins.items())
    # Every runtime dependency of pyproject.toml, at a version its specifier allows...
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    for spec in project["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in {LOCK.relative_to(REPO)}: run .venv/bin/python image/lock.py"
        assert requirement.specifier.contains(pins[name]), (name, pins[name], str(requirement.specifier))
    # ...and the whole closure at exactly the versions the tests run with.
    for pinned, version in pins.items():
        assert metadata.version(pinned) == version, f"{pinned}: .venv has {metadata.version(pinned)}, the lock {version}"
    closure = {canonicalize_name(r) for r in _runtime_closure(project["project"]["dependencies"])}
    assert set(pins) == closure, "run .venv/bin/python image/lock.py"
    backend = _lock(BUILD_LOCK)
    for spec in project["build-system"]["requires"]:
        requirement = Requirement(spec)
        assert requirement.specifier.contains(backend[canonicalize_name(requirement.name)])


def _runtime_closure(requirements: list[str]) -> set[str]:
    """The distributions the installed runtime dependencies pull in (markers evaluated for Linux, 3.11)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    environment = {"sys_platform": "linux", "platform_system": "Linux", "python_version": "3.11",
                   "implementation_name": "cpython", "os_name": "posix", "extra": ""}
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate(environment)):
            continue
        seen.add(name)
        todo += [Requirement(r) for r in metadata.requires(name) or []]
    return seen


# -- the wheel set, installed from scratch and run read-only as a non-root user ---------------------


def _usable_by_anyone(path: Path) -> bool:
    """Every directory up to ``path`` lets others in, and ``path`` lets them read and run it."""
    path = path.resolve()
    for parent in path.parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return bool(path.stat().st_mode & stat.S_IROTH and path.stat().st_mode & stat.S_IXOTH)


def _python_for_user() -> Path:
    """A CPython 3.11 the test user may run (the virtual environment's is under /root, mode 700 here)."""
    for candidate in (Path("/usr/bin/python3.11"), Path(getattr(sys, "_base_executable", sys.executable))):
        if candidate.exists() and _usable_by_anyone(candidate):
            out = subprocess.run([str(candidate), "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                                 capture_output=True, text=True, timeout=30)
            if out.stdout.strip() == "True":
                return candidate
    pytest.skip("no CPython 3.11 that another user may run (e.g. Debian's python3.11)")


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temp dir the unprivileged user can enter (pytest's tmp_path is under a mode-700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="spillover-image-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.rglob("*"):  # the install was made read-only
            if child.is_dir() and not child.is_symlink():
                child.chmod(0o755)
        shutil.rmtree(path)


def _pip(*args: str | Path, timeout: float = 600) -> str:
    out = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *map(str, args)],
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _as_user(argv: list[str], tmp: Path, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``argv`` as uid/gid 65532 without supplementary groups or privileges, HOME nowhere, TMPDIR ``tmp``."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv (util-linux) to run as another user")
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "TMPDIR": str(tmp), "LANG": "C.UTF-8"}
    return subprocess.run(
        ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "--no-new-privs", *argv],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp, **kwargs,
    )


@pytest.mark.timeout(900)
def test_the_wheel_set_installs_from_scratch_and_runs_read_only_as_a_non_root_user(world_tmp: Path) -> None:
    python = _python_for_user()
    wheels = world_tmp / "wheels"
    # The Dockerfile's steps, outside a container: the pinned wheels (hash-checked), spillover's own
    # wheel built with the pinned backend from a copy of what the Dockerfile copies...
    _pip("wheel", "--require-hashes", "--no-deps", "--only-binary=:all:", "-r", LOCK, "--wheel-dir", wheels)
    assert len(list(wheels.glob("*.whl"))) == len(_lock(LOCK))
    build = world_tmp / "build-venv"
    subprocess.run([sys.executable, "-m", "venv", str(build)], check=True, timeout=120)
    subprocess.run([str(build / "bin" / "python"), "-m", "pip", "install", "--quiet", "--require-hashes",
                    "--no-deps", "--only-binary=:all:", "-r", str(BUILD_LOCK)], check=True, timeout=600)
    source = world_tmp / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "spillover", source / "spillover", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([str(build / "bin" / "python"), "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(wheels), str(source)], check=True, timeout=300)
    (own,) = wheels.glob("spillover-*.whl")
    # ...into a fresh environment of a Python the user may run, offline.
    runtime = world_tmp / "opt-spillover"
    subprocess.run([str(python), "-m", "venv", "--without-pip", str(runtime)], check=True, timeout=120)
    target: list[str | Path] = ["--python", runtime / "bin" / "python"]
    _pip(*target, "install", "--no-index", "--find-links", wheels, "--require-hashes", "--no-deps", "-r", LOCK)
    _pip(*target, "install", "--no-index", "--no-deps", own)
    _pip(*target, "check")
    # Read-only, like the image's root filesystem: nothing of the install can be written.
    for path in [runtime, *runtime.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~0o222)
    tmp = world_tmp / "tmp"
    tmp.mkdir(mode=0o1777)
    tmp.chmod(0o1777)
    spillover = str(runtime / "bin" / "spillover")

    version = _as_user([spillover, "--version"], tmp)
    assert version.returncode == 0 and version.stdout.strip() == f"spillover {metadata.version('spillover')}", (
        version.stdout + version.stderr)
    policies = world_tmp / "policies"
    policies.mkdir()
    for policy in POLICIES:
        shutil.copy2(policy, policies / policy.name)
    validate = _as_user([spillover, "validate", *map(str, sorted(policies.iterdir()))], tmp)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    refused = _as_user([str(runtime / "bin" / "python"), "-c",
                        f"open({str(runtime / 'lib' / 'probe')!r}, 'w')"], tmp)
    assert refused.returncode != 0 and "PermissionError" in refused.stderr

    # And it serves: xDS and the admin endpoint up, the example policies loaded.
    admin, xds, listen = free_port(), free_port(), free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "TMPDIR": str(tmp)}
    serve = subprocess.Popen(
        ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "--no-new-privs", spillover, "serve",
         "--policies", str(policies), "--xds-address", f"127.0.0.1:{xds}", "--admin-address", f"127.0.0.1:{admin}",
         "--listen", f"127.0.0.1:{listen}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp,
    )
    try:
        wait_until(lambda: request("GET", f"http://127.0.0.1:{admin}/readyz").status == 200, timeout=60,
                   message="spillover serve (read-only install, uid 65532) ready")
        models = request("GET", f"http://127.0.0.1:{admin}/debug/models").json()["models"]
        assert len(models) == len(POLICIES) and not any(m["errors"] for m in models.values()), models
    finally:
        serve.terminate()
        try:
            output, _ = serve.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            serve.kill()
            output, _ = serve.communicate(timeout=10)
    assert serve.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


# -- the real image: buildah + debootstrap build it, runc runs it -----------------------------------

# Resolved as image/build.sh resolves it (.cache is often a symlink; runc refuses a rootfs through one).
IMAGE_CACHE = Path(os.environ.get("SPILLOVER_IMAGE_CACHE") or REPO / ".cache" / "image").resolve()
_ids = itertools.count()


def buildah() -> list[str]:
    """buildah on image/build.sh's storage (the driver it chose is written next to it)."""
    driver = (IMAGE_CACHE / "storage-driver").read_text().strip()
    return ["buildah", "--root", str(IMAGE_CACHE / f"storage-{driver}"), "--runroot",
            str(IMAGE_CACHE / f"run-{driver}"), "--storage-driver", driver]


@pytest.fixture(scope="module")
def image() -> str:
    missing = [t for t in ("buildah", "debootstrap", "runc") if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"building the image needs root and {', '.join(missing) or 'nothing more'} "
                    "(`make system-deps` installs buildah, debootstrap and runc)")
    out = subprocess.run(["bash", str(REPO / "image" / "build.sh")], capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return f"ghcr.io/spillover-dev/spillover:{version}"


@pytest.fixture(scope="module")
def image_rootfs(image: str) -> Iterator[Path]:
    """The image's filesystem, mounted (a buildah working container, removed afterwards)."""
    container = subprocess.run([*buildah(), "from", "--pull-never", "--quiet", image], capture_output=True, text=True,
                               timeout=120, check=True).stdout.strip()
    try:
        mount = subprocess.run([*buildah(), "mount", container], capture_output=True, text=True, timeout=60,
                               check=True).stdout.strip()
        yield Path(mount)
    finally:
        subprocess.run([*buildah(), "rm", container], capture_output=True, timeout=60)


def _bundle(tmp_path: Path, rootfs: Path, config: dict[str, Any], args: list[str],
            mounts: list[dict[str, Any]]) -> Path:
    """An OCI bundle as a Kubernetes pod with the manifests' securityContext would run the image:
    the image's user, environment, entrypoint and working directory, a read-only root filesystem, no
    capabilities, no new privileges, a tmpfs on /tmp (the emptyDir), the host's network (loopback)."""
    bundle = tmp_path / f"bundle-{next(_ids)}"
    bundle.mkdir()
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True, timeout=30)
    spec = json.loads((bundle / "config.json").read_text())
    uid, gid = (int(x) for x in config["User"].split(":"))
    spec["root"] = {"path": str(rootfs), "readonly": True}
    process = spec["process"]
    process.update(terminal=False, user={"uid": uid, "gid": gid}, env=config["Env"], cwd=config["WorkingDir"],
                   args=[*config["Entrypoint"], *args], noNewPrivileges=True)
    process["capabilities"] = {k: [] for k in process["capabilities"]}
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    spec["mounts"] += [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                        "options": ["nosuid", "nodev", "mode=1777", "size=64m"]}, *mounts]
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def _image_config(image: str) -> dict[str, Any]:
    out = subprocess.run([*buildah(), "inspect", "--type", "image", image], capture_output=True, text=True,
                         timeout=60, check=True)
    config: dict[str, Any] = json.loads(out.stdout)["OCIv1"]["config"]
    return config


# The first build (debootstrap, then the Dockerfile) happens in the first test's setup: minutes.
@pytest.mark.timeout(1800)
def test_the_image_is_built_with_its_user_entrypoint_and_labels(image: str) -> None:
    config = _image_config(image)
    assert config["User"] == f"{USER}:{USER}"
    assert config["Entrypoint"] == ["spillover"]
    assert config["Labels"]["org.opencontainers.image.version"] == image.rsplit(":", 1)[1]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["PATH"].startswith("/opt/spillover/bin:") and env["TMPDIR"] == "/tmp"


@pytest.mark.timeout(1800)
def test_the_image_runs_read_only_as_non_root_and_serves(image: str, image_rootfs: Path, tmp_path: Path) -> None:
    config = _image_config(image)
    policies = [{"destination": "/policies", "type": "bind", "source": str(REPO / "examples" / "policies"),
                 "options": ["rbind", "ro"]}]

    def run(args: list[str], entrypoint: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        cfg = dict(config, Entrypoint=entrypoint if entrypoint is not None else config["Entrypoint"])
        bundle = _bundle(tmp_path, image_rootfs, cfg, args, policies)
        name = f"spillover-test-{os.getpid()}-{next(_ids)}"
        return subprocess.run(["runc", "--root", str(tmp_path / "runc"), "run", "--bundle", str(bundle), name],
                              capture_output=True, text=True, timeout=120)

    version = run(["--version"])
    assert version.returncode == 0 and version.stdout.strip() == image.replace("ghcr.io/spillover-dev/spillover:",
                                                                               "spillover "), version.stderr
    validate = run(["validate", *[f"/policies/{p.name}" for p in POLICIES]])
    assert validate.returncode == 0, validate.stdout + validate.stderr
    probe = run(["-c", "import os; print(os.getuid(), os.getgid(), open('/proc/self/status').read().split('CapEff:')[1]"
                       ".split()[0]); open('/tmp/ok', 'w').write('x'); open('/opt/spillover/probe', 'w')"],
                entrypoint=["python3"])
    assert probe.stdout.split()[:3] == [str(USER), str(USER), "0000000000000000"], probe.stdout + probe.stderr
    assert "Read-only file system" in probe.stderr, probe.stderr

    admin, xds, listen = free_port(), free_port(), free_port()
    bundle = _bundle(tmp_path, image_rootfs, config,
                     ["serve", "--policies", "/policies", "--xds-address", f"127.0.0.1:{xds}",
                      "--admin-address", f"127.0.0.1:{admin}", "--listen", f"127.0.0.1:{listen}"], policies)
    name = f"spillover-serve-{os.getpid()}-{next(_ids)}"
    runc = ["runc", "--root", str(tmp_path / "runc")]
    serve = subprocess.Popen([*runc, "run", "--bundle", str(bundle), name], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: request("GET", f"http://127.0.0.1:{admin}/readyz").status == 200, timeout=60,
                   message="spillover serve in the image ready")
        models = request("GET", f"http://127.0.0.1:{admin}/debug/models").json()["models"]
        assert len(models) == len(POLICIES), models
    finally:
        subprocess.run([*runc, "kill", name, "TERM"], capture_output=True, timeout=30)
        try:
            output, _ = serve.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            subprocess.run([*runc, "kill", name, "KILL"], capture_output=True, timeout=30)
            output, _ = serve.communicate(timeout=30)
        subprocess.run([*runc, "delete", "--force", name], capture_output=True, timeout=30)
    assert serve.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
