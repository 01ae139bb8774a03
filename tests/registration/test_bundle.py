"""The agent bundle: builds from the repo, holds every wheel, is cached by content hash, and installs offline.

Downloading the dependency wheels needs PyPI (or pip's cache) once; the install step is fully offline
(``--no-index``), as it is in a guest.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from controller.registration import bundle as bundle_mod
from controller.registration import guest
from controller.registration.bundle import Bundle, build_bundle


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """One bundle for CPython 3.11 built into a private cache."""
    return build_bundle(tmp_path_factory.mktemp("bundles"))


def test_bundle_contents_match_manifest(built: Bundle) -> None:
    with tarfile.open(built.tar_path) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        for wheel, digest in manifest["wheels"].items():
            data = tar.extractfile(f"wheels/{wheel}").read()  # type: ignore[union-attr]
            assert hashlib.sha256(data).hexdigest() == digest
    assert {"manifest.json", "requirements.txt", "vmbackup-agent.service"} <= names
    assert f"installer/{manifest['installer_wheel']}" in names and manifest["installer_wheel"].startswith("pip-")
    wheels = " ".join(manifest["wheels"])
    for dep in ("grpcio-", "grpcio_health_checking-", "protobuf-", "pyyaml-", "vmbackup-"):
        assert dep in wheels.lower(), f"{dep} missing from {wheels}"
    assert "cp311" in wheels  # grpcio built for the guest's CPython 3.11
    assert manifest["agent_version"] == built.agent_version == _repo_agent_version()
    assert manifest == built.manifest


def test_agent_wheel_has_agent_and_protos_but_no_controller(built: Bundle) -> None:
    import zipfile

    with tarfile.open(built.tar_path) as tar:
        data = tar.extractfile(f"wheels/{built.manifest['agent_wheel']}").read()  # type: ignore[union-attr]
    wheel = built.tar_path.parent / "agent.whl"
    wheel.write_bytes(data)
    names = zipfile.ZipFile(wheel).namelist()
    assert "agent/main.py" in names
    assert "agent/systemd/vmbackup-agent.service" in names
    assert "vmbackup/agent/v1/agent_pb2_grpc.py" in names
    assert not [n for n in names if n.startswith("controller/")]


def test_cached_by_content_hash(built: Bundle) -> None:
    cache = built.tar_path.parent.parent
    mtime = built.tar_path.stat().st_mtime_ns
    again = build_bundle(cache)
    assert again.key == built.key and again.tar_path.stat().st_mtime_ns == mtime  # not rebuilt
    root = bundle_mod.source_root()
    reqs = bundle_mod.pinned_requirements()
    assert bundle_mod.bundle_key(root, reqs, "3.12") != built.key
    assert bundle_mod.bundle_key(root, [*reqs[:-1], "pyyaml==0.0"], "3.11") != built.key


def test_installs_offline_into_fresh_venv(built: Bundle, tmp_path: Path) -> None:
    """The guest's own install script, run here: a venv without pip, the bundle's pip from its wheel, no index."""
    if sys.version_info[:2] != (3, 11):
        pytest.skip(f"the bundle targets CPython 3.11; this interpreter is {sys.version.split()[0]}")
    with tarfile.open(built.tar_path) as tar:
        tar.extractall(tmp_path / "b", filter="data")
    venv = tmp_path / "opt" / "venv"
    script = guest.install_script(built, str(tmp_path / "b"), venv=str(venv), python3=sys.executable)
    for attempt in ("fresh", "again (an upgrade reuses the venv)"):
        out = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
        assert out.returncode == 0, f"{attempt}: {out.stderr[-3000:]}"
        assert out.stdout.strip().endswith(f"vmbackup-agent {built.agent_version}"), attempt
    assert not (venv / "bin" / "pip").exists()  # no pip inside: the installer wheel did the work
    # the generated gRPC code imports with the bundled grpcio/protobuf, and it was byte-compiled at install time
    probe = (
        "from vmbackup.agent.v1 import agent_pb2_grpc; import grpc_health.v1.health; import yaml; print('ok')"
    )
    res = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True)
    assert res.stdout.strip() == "ok", res.stderr
    assert list(venv.glob("lib/python3.11/site-packages/agent/__pycache__/*.pyc"))


def _repo_agent_version() -> str:
    """agent.__version__ of the source tree."""
    import agent

    return str(agent.__version__)
