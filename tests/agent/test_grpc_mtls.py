"""Real gRPC over mutual TLS on 127.0.0.1: the agent runs as a subprocess, AgentClient calls it.

The agent's config restricts it to this test's loop mounts (allowed_mount_points) and every Freeze names them.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from vmbackup.agent.v1 import agent_pb2, agent_pb2_grpc

from controller.agentclient import AgentCallError, AgentClient, AgentRefused, AgentUnreachable, ClientTLS
from controller.pki import CertificateAuthority
from tests.agent.helpers import LoopFs, blocks, guard, is_frozen, writer

pytestmark = pytest.mark.root


@dataclass
class RunningAgent:
    """An agent subprocess and how to reach it."""

    proc: subprocess.Popen[bytes]
    port: int
    vm_uuid: str
    ca: CertificateAuthority
    serial: int
    mounts: list[str]
    log: Path


def start_agent(tmp: Path, ca: CertificateAuthority, vm_uuid: str, mounts: list[str]) -> RunningAgent:
    """Issue the agent's cert, write its config, start it, wait for 'listening on'."""
    issued = ca.issue_agent_cert(vm_uuid, "test-vm")
    tls = tmp / "tls"
    tls.mkdir()
    (tls / "agent.crt").write_bytes(issued.cert_pem)
    (tls / "agent.key").touch(mode=0o600)
    (tls / "agent.key").write_bytes(issued.key_pem)
    (tls / "ca.crt").write_bytes(ca.ca_pem)
    cfg = {
        "listen_address": "127.0.0.1", "port": 0, "tls_cert": str(tls / "agent.crt"),
        "tls_key": str(tls / "agent.key"), "tls_ca": str(tls / "ca.crt"), "hooks_dir": str(tmp / "hooks"),
        "freeze_timeout_s": 10, "allowed_mount_points": mounts,
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    log = tmp / "agent.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "agent.main", "--config", str(tmp / "config.yaml")],
                                stderr=err, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
        if m:
            return RunningAgent(proc, int(m.group(1)), vm_uuid, ca, issued.serial, mounts, log)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"agent did not start: {log.read_text()}")


@pytest.fixture
def agent(loopfs: list[LoopFs], tmp_path: Path) -> Iterator[RunningAgent]:
    """A running agent limited to the loop mounts; stopped (SIGTERM -> thaw) at teardown."""
    ca = CertificateAuthority.load_or_create(tmp_path / "pki")
    mounts = guard([f.mount for f in loopfs], loopfs)
    (tmp_path / "agent").mkdir()
    a = start_agent(tmp_path / "agent", ca, str(uuid.uuid4()), mounts)
    try:
        yield a
    finally:
        if a.proc.poll() is None:
            a.proc.send_signal(signal.SIGTERM)
            try:
                a.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                a.proc.kill()


def client(a: RunningAgent, **kw: object) -> AgentClient:
    """The controller's client for this agent."""
    return AgentClient("127.0.0.1", a.port, vm_uuid=a.vm_uuid, tls=ClientTLS.from_pki(a.ca), **kw)  # type: ignore[arg-type]


def test_happy_path_and_getinfo_while_frozen(agent: RunningAgent, loopfs: list[LoopFs]) -> None:
    """Health, GetInfo, Freeze, GetInfo while frozen (with a blocked writer), FreezeStatus, Thaw."""
    with client(agent) as c:
        assert c.health() == "SERVING"
        info = c.get_info()
        assert info.api_version == 1 and info.quiescer == "linux-fsfreeze" and "fsfreeze" in info.capabilities
        eligible = {f.mount_point for f in info.filesystems if f.eligible}
        assert eligible == set(agent.mounts)  # the allow-list hides every host filesystem
        t0 = time.monotonic()
        fr = c.freeze(agent.mounts, timeout_s=20, job_id="job-42")
        freeze_rtt = time.monotonic() - t0
        try:
            assert sorted(fr.frozen) == sorted(agent.mounts) and fr.consistency == "FILE_SYSTEM"
            p = writer(loopfs[0].mount)
            assert blocks(p, 1.0)
            t1 = time.monotonic()
            frozen_info = c.get_info()
            getinfo_rtt = time.monotonic() - t1
            assert {f.mount_point for f in frozen_info.filesystems if f.frozen} == set(agent.mounts)
            st = c.freeze_status()
            assert st.frozen and st.job_id == "job-42" and sorted(st.mount_points) == sorted(agent.mounts)
        finally:
            th = c.thaw(fr.token)
        session_ms = (time.monotonic() - t0) * 1000
        assert th.held and not th.auto_thawed and sorted(th.thawed) == sorted(agent.mounts)
        # the writer stayed blocked for 1 s inside the frozen span, which lies within Freeze call -> Thaw reply
        assert 900 <= th.guest_frozen_ms <= session_ms and th.freeze_hooks_ms == th.thaw_hooks_ms == 0
        assert p.wait(timeout=10) == 0
        print(f"Freeze RPC {1000 * freeze_rtt:.0f} ms, GetInfo while frozen {1000 * getinfo_rtt:.0f} ms, "
              f"frozen for {th.frozen_ms} ms (FIFREEZE -> FITHAW {th.guest_frozen_ms:.1f} ms)")


def test_double_freeze_and_wrong_token_carry_stable_codes(agent: RunningAgent) -> None:
    """ALREADY_FROZEN / INVALID_TOKEN arrive as AgentCallError with the agent's code and remediation."""
    with client(agent) as c:
        fr = c.freeze(agent.mounts, timeout_s=20, job_id="j1")
        try:
            with pytest.raises(AgentCallError) as e1:
                c.freeze(agent.mounts, timeout_s=20, job_id="j2")
            assert e1.value.agent_code == "ALREADY_FROZEN" and e1.value.grpc_status == "FAILED_PRECONDITION"
            assert "Thaw" in e1.value.remediation
            with pytest.raises(AgentCallError) as e2:
                c.thaw("wrong")
            assert e2.value.agent_code == "INVALID_TOKEN"
        finally:
            assert c.thaw(fr.token).held


def test_freeze_of_host_root_refused(agent: RunningAgent) -> None:
    """Asking for / is refused by the allow-list (MOUNT_NOT_ALLOWED) and nothing is frozen."""
    with client(agent) as c:
        with pytest.raises(AgentCallError) as e:
            c.freeze(["/"], timeout_s=5, job_id="j")
        assert e.value.agent_code == "MOUNT_NOT_ALLOWED"
        assert not c.freeze_status().frozen


def test_wrong_ca_refused(agent: RunningAgent, tmp_path: Path) -> None:
    """A client whose cert comes from another CA (and who trusts that CA) is refused."""
    other = CertificateAuthority.load_or_create(tmp_path / "other-pki")
    bad = AgentClient("127.0.0.1", agent.port, vm_uuid=agent.vm_uuid, tls=ClientTLS.from_pki(other),
                      check_revocation=False, call_timeout_s=5)
    with pytest.raises(AgentRefused):
        bad.get_info()
    own = client(agent).tls  # right CA bundle, but a client cert signed by another CA: the server refuses
    foreign = other.controller_client_cert()
    mixed = ClientTLS(own.ca_pem, foreign.cert_pem, foreign.key_pem)
    with pytest.raises((AgentRefused, AgentUnreachable)):
        AgentClient("127.0.0.1", agent.port, vm_uuid=agent.vm_uuid, tls=mixed, check_revocation=False,
                    call_timeout_s=5).get_info()


def test_plaintext_refused(agent: RunningAgent) -> None:
    """A plaintext gRPC client gets no answer."""
    with grpc.insecure_channel(f"127.0.0.1:{agent.port}", options=[("grpc.enable_http_proxy", 0)]) as ch:
        with pytest.raises(grpc.RpcError) as e:
            agent_pb2_grpc.AgentStub(ch).GetInfo(agent_pb2.GetInfoRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_other_vms_cert_and_revoked_cert_refused(agent: RunningAgent) -> None:
    """Another VM's name does not match this agent's cert; a revoked agent serial is refused."""
    tls = ClientTLS.from_pki(agent.ca)
    with pytest.raises(AgentRefused):
        AgentClient("127.0.0.1", agent.port, vm_uuid=str(uuid.uuid4()), tls=tls, call_timeout_s=5).get_info()
    agent.ca.revoke(agent.serial)
    with pytest.raises(AgentRefused, match="revoked"):
        client(agent).get_info()


def test_sigterm_thaws(agent: RunningAgent, loopfs: list[LoopFs]) -> None:
    """SIGTERM to an agent holding a freeze thaws before exit; the blocked writer completes."""
    with client(agent) as c:
        c.freeze(agent.mounts, timeout_s=30, job_id="j")
    p = writer(loopfs[1].mount)
    assert blocks(p, 1.0)
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=15) == 0
    assert p.wait(timeout=5) == 0
    assert not any(is_frozen(f.mount) for f in loopfs)
    assert "thawing job j before exit" in agent.log.read_text()


def test_unreachable(tmp_path: Path) -> None:
    """Nothing listening: AgentUnreachable, quickly."""
    ca = CertificateAuthority.load_or_create(tmp_path / "pki")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AgentUnreachable):
        AgentClient("127.0.0.1", port, vm_uuid=str(uuid.uuid4()), tls=ClientTLS.from_pki(ca),
                    call_timeout_s=2).get_info()


def test_boot_check_agent_probe_closes_its_clients(
    agent: RunningAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """restore/probes.check_agent closes every client it opens: the answered one and each refused attempt."""
    from controller.restore import probes
    from controller.settings import Settings

    opened: list[int] = []
    closed: list[int] = []
    real_init, real_close = AgentClient.__init__, AgentClient.close

    def init(self: AgentClient, *args: Any, **kw: Any) -> None:
        real_init(self, *args, **kw)
        opened.append(id(self))

    def close(self: AgentClient) -> None:
        closed.append(id(self))
        real_close(self)

    monkeypatch.setattr(AgentClient, "__init__", init)
    monkeypatch.setattr(AgentClient, "close", close)
    settings = Settings(home=tmp_path, vault=tmp_path / "vault", uri="test:///default", virt_type="auto",
                        image_cache=tmp_path / "images")  # pki_dir is the agent fixture's CA (tmp_path / "pki")
    ok = probes.check_agent(settings, agent.port, agent.vm_uuid, timeout_s=20)
    assert ok.ok and "GetInfo answered" in ok.detail, ok.detail
    assert len(opened) == 1 and closed == opened
    refused = probes.check_agent(settings, agent.port, str(uuid.uuid4()), timeout_s=3)  # another VM's name
    assert not refused.ok and "AGENT_TLS_REFUSED" in refused.detail, refused.detail
    assert len(opened) >= 2 and sorted(closed) == sorted(opened)
