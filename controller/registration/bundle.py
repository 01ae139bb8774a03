"""The agent bundle: the vmbackup wheel (agent/ + generated protos) plus its dependency wheels, for the guest.

A bundle is one tar file holding ``manifest.json``, ``requirements.txt``, ``vmbackup-agent.service``,
``wheels/*.whl`` and ``installer/pip-*.whl`` (pip itself, run straight from its wheel in the guest, so the agent's
venv is made ``--without-pip``: ensurepip alone took 75 s in an emulated guest). It is built for one guest Python
(default CPython 3.11, x86_64 manylinux) so the guest needs no internet. It is cached by content hash in
``$VMBACKUP_HOME/bundles/<hash>/`` (hash of the agent sources, the dependency pins, the installer and the target)::

    b = build_bundle(settings.home / "bundles")                 # or python_version="3.12"
    b.tar_path, b.manifest["agent_version"], b.key
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import controller
from controller.registration.exceptions import BundleBuildFailed

#: The agent's runtime dependencies (pyproject's [project] dependencies), pinned to the controller's versions.
AGENT_REQUIREMENTS = ("grpcio", "grpcio-health-checking", "protobuf", "pyyaml")
DEFAULT_PYTHON = "3.11"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
#: What goes into the vmbackup wheel for the guest: the agent and the generated protos, never controller/.
_SOURCE_ITEMS = ("pyproject.toml", "agent", "protos")
_PIP_TIMEOUT_S = 600
BUNDLE_FORMAT = 2  # 2: installer/ (pip run from its wheel)
_build_lock = threading.Lock()


@dataclass(frozen=True)
class Bundle:
    """A built (or cached) bundle: its tar file, manifest and cache key."""

    key: str
    tar_path: Path
    manifest: dict[str, Any]

    @property
    def agent_version(self) -> str:
        """The agent version inside."""
        return str(self.manifest["agent_version"])


def source_root() -> Path:
    """The vmbackup source tree the controller runs from (the editable install's repo)."""
    root = Path(controller.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file() or not (root / "agent").is_dir():
        raise BundleBuildFailed(f"no vmbackup source tree at {root} (pyproject.toml and agent/ expected)")
    return root


def pinned_requirements() -> list[str]:
    """The agent's dependencies pinned to the versions installed beside the controller."""
    pins = []
    for name in AGENT_REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError as exc:
            raise BundleBuildFailed(f"{name} is not installed beside the controller; cannot pin it") from exc
    return pins


def _source_files(root: Path) -> list[Path]:
    """The files that make up the guest wheel, sorted (no caches, no bytecode)."""
    files: list[Path] = []
    for item in _SOURCE_ITEMS:
        p = root / item
        if p.is_file():
            files.append(p)
            continue
        for f in p.rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".pyo"):
                files.append(f)
    return sorted(files)


def installer_pin() -> str:
    """The pip the guest runs from its wheel: the controller's own version, known to work with these pins."""
    return f"pip=={metadata.version('pip')}"


def bundle_key(root: Path, requirements: list[str], python_version: str) -> str:
    """Content hash of everything a bundle is made of: sources, pins, installer, target Python and platforms."""
    h = hashlib.sha256()
    h.update(json.dumps([BUNDLE_FORMAT, requirements, installer_pin(), python_version, PLATFORMS]).encode())
    for f in _source_files(root):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def agent_version(root: Path) -> str:
    """The agent's __version__ as written in agent/__init__.py (without importing it)."""
    for line in (root / "agent" / "__init__.py").read_text(encoding="utf-8").splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise BundleBuildFailed(f"no __version__ in {root / 'agent' / '__init__.py'}")


def _pip(args: list[str], what: str) -> None:
    """Run ``python -m pip ARGS`` from the controller's interpreter; BundleBuildFailed with its output."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BundleBuildFailed(f"{what}: pip took over {_PIP_TIMEOUT_S} s") from exc
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-15:])
        raise BundleBuildFailed(f"{what} failed (pip exit {res.returncode})", details={"pip_output": tail})


def _build_agent_wheel(root: Path, out: Path) -> Path:
    """``pip wheel --no-deps`` of a clean copy of the agent sources (no stale build/ dir in the repo)."""
    with tempfile.TemporaryDirectory(prefix="vmbackup-src-") as tmp:
        src = Path(tmp)
        for f in _source_files(root):
            dest = src / f.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
        (src / "README.md").write_text("vmbackup guest agent\n", encoding="utf-8")
        _pip(["wheel", "--no-deps", "-w", str(out), str(src)], "building the vmbackup wheel")
    wheels = sorted(out.glob("vmbackup-*.whl"))
    if len(wheels) != 1:
        raise BundleBuildFailed(f"expected one vmbackup wheel in {out}, found {[w.name for w in wheels]}")
    return wheels[0]


def _download_dependencies(requirements: list[str], python_version: str, out: Path) -> None:
    """``pip download`` binary wheels of the pinned dependencies for the guest's Python and platform."""
    abi = "cp" + python_version.replace(".", "")
    args = [
        "download",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--abi",
        abi,
        "--abi",
        "abi3",
        "--abi",
        "none",
        "-d",
        str(out),
    ]
    for plat in PLATFORMS:
        args += ["--platform", plat]
    _pip([*args, *requirements], f"downloading agent dependency wheels for CPython {python_version}")


def _sha256(path: Path) -> str:
    """SHA-256 of a file, hex."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_cached(bundle_dir: Path, key: str) -> Bundle | None:
    """A complete bundle already in the cache, or None."""
    tar_path, manifest_path = bundle_dir / "bundle.tar", bundle_dir / "manifest.json"
    if not (tar_path.is_file() and manifest_path.is_file()):
        return None
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return Bundle(key=key, tar_path=tar_path, manifest=manifest)


def build_bundle(cache_dir: Path, python_version: str = DEFAULT_PYTHON) -> Bundle:
    """The bundle for the current agent sources and target Python, built and cached if needed."""
    with _build_lock:  # bulk register: threads share one build
        return _build_bundle(cache_dir, python_version)


def _build_bundle(cache_dir: Path, python_version: str) -> Bundle:
    """build_bundle without the lock."""
    root = source_root()
    requirements = pinned_requirements()
    key = bundle_key(root, requirements, python_version)
    bundle_dir = cache_dir / key
    cached = _load_cached(bundle_dir, key)
    if cached is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".build-{key}-", dir=cache_dir) as tmp:
        work = Path(tmp)
        wheels = work / "wheels"
        wheels.mkdir()
        agent_wheel = _build_agent_wheel(root, wheels)
        _download_dependencies(requirements, python_version, wheels)
        installer = work / "installer"
        installer.mkdir()
        _download_dependencies([installer_pin()], python_version, installer)
        pip_wheels = sorted(installer.glob("pip-*.whl"))
        if len(pip_wheels) != 1:
            raise BundleBuildFailed(f"expected one pip wheel in {installer}, found {[w.name for w in pip_wheels]}")
        manifest: dict[str, Any] = {
            "format": BUNDLE_FORMAT,
            "key": key,
            "agent_version": agent_version(root),
            "python_version": python_version,
            "platforms": list(PLATFORMS),
            "requirements": requirements,
            "agent_wheel": agent_wheel.name,
            "installer_wheel": pip_wheels[0].name,
            "wheels": {w.name: _sha256(w) for w in sorted(wheels.glob("*.whl"))},
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        (work / "requirements.txt").write_text("\n".join(requirements) + "\n", encoding="utf-8")
        shutil.copy2(root / "agent" / "systemd" / "vmbackup-agent.service", work / "vmbackup-agent.service")
        with tarfile.open(work / "bundle.tar", "w") as tar:
            for name in ("manifest.json", "requirements.txt", "vmbackup-agent.service", "wheels", "installer"):
                tar.add(work / name, arcname=name)
        _publish(work, bundle_dir)
    result = _load_cached(bundle_dir, key)
    if result is None:  # pragma: no cover - publish just wrote it
        raise BundleBuildFailed(f"bundle {key} vanished from {bundle_dir}")
    return result


def _publish(work: Path, bundle_dir: Path) -> None:
    """Move the finished bundle into place atomically (a concurrent builder of the same key may win)."""
    final = work.with_name(work.name + ".done")
    final.mkdir()
    for name in ("bundle.tar", "manifest.json"):
        (work / name).rename(final / name)
    try:
        final.rename(bundle_dir)
    except OSError:
        shutil.rmtree(final, ignore_errors=True)
        if not (bundle_dir / "bundle.tar").is_file():
            raise
