"""The web dashboard (`vmbackup serve --http`) over a real vault point (PointWriter) and real job rows with the
backup engine's phases: the token rules with urllib, and the pages in Debian's headless chromium (selenium)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller import db, settings
from controller.errors import InvalidArgument
from controller.jobs.store import JobStore, VmRef
from controller.registration.store import save
from controller.restore.bootcheck import BootCheckResult
from controller.scheduling.serve import Runners, ServeOptions, Server
from controller.vault import Vault, new_point_id
from controller.web.exceptions import WebBindRefused, WebTokenInsecure
from controller.web.server import WebServer, start
from controller.web.token import load_or_create, token_path
from tests.helpers import made_up_registration

ENGINE_PHASES = ("precheck", "checkpoint", "prepare", "freeze", "snapshot", "thaw", "copy", "commit")


def backup(
    home: settings.Settings, tmp: Path, uuid: str, name: str, ago: timedelta = timedelta(0), fail: bool = False
) -> dict[str, str]:
    """A backup job with the engine's phases (copy adds bytes) and, unless fail, the real point it published
    (dated `ago` before now, so points of one test sort by time)."""
    jobs = JobStore(db.connect(home.db_path))
    job = jobs.create("backup", vm=VmRef(uuid, name, "qemu:///system"))
    out = {"job_id": job.id}
    try:
        with jobs.run(job.id) as run:
            for ph in ENGINE_PHASES:
                with run.phase(ph):
                    time.sleep(0.02 if ph in ("snapshot", "copy") else 0.002)
                    if ph == "copy":
                        if fail:
                            raise InvalidArgument("the disk <vda> went away")  # an error with a remediation
                        src = tmp / f"{name}.raw"
                        src.write_bytes(os.urandom(64 * 1024))
                        created = datetime.now(UTC) - ago
                        with Vault(home.vault).new_point(uuid, new_point_id(created)) as w:
                            w.copy_disk("vda", src, fmt="raw")
                            w.write_domain_xml(f"<domain><name>{name}</name><uuid>{uuid}</uuid></domain>")
                            p = w.publish({"vm": {"uuid": uuid, "name": name, "host": "qemu:///system"},
                                           "consistency": "FILE_SYSTEM", "job_id": job.id,
                                           "created": created.isoformat(timespec="seconds")})  # fmt: skip
                        run.add_bytes(64 * 1024)
                        out["point_id"] = p.point_id
    except InvalidArgument:
        pass
    return out


@pytest.fixture
def lab(private_settings: settings.Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Two registered VMs: web<b> (a name to escape) with two backups and a passed boot-check, db1 whose backup
    failed; the dashboard serving them on 127.0.0.1 (ephemeral port)."""
    home = private_settings
    conn = db.connect(home.db_path)
    regs = {n: made_up_registration(n) for n in ("web<b>", "db1")}
    for r in regs.values():
        save(conn, r)
    web, dbvm = regs["web<b>"].vm_uuid, regs["db1"].vm_uuid
    backup(home, tmp_path, web, "web<b>", ago=timedelta(hours=2))
    last = backup(home, tmp_path, web, "web<b>")
    vault = Vault(home.vault)
    verdict = BootCheckResult(point_id=last["point_id"], job_id="j1", vm_name="web<b>", passed=True).to_dict()
    vault.update_manifest(vault.get_point(last["point_id"]), boot_check=verdict)  # what a real boot-check writes
    failed = backup(home, tmp_path, dbvm, "db1", fail=True)
    srv = start(home, "127.0.0.1:0")
    try:
        yield {"home": home, "srv": srv, "token": load_or_create(home), "web": web, "db": dbvm, "last": last,
               "failed": failed}  # fmt: skip
    finally:
        srv.close()


def get(srv: WebServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """GET without following redirects: (status, headers, body)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(srv.url.rstrip("/") + path, headers=headers or {})
    try:
        with opener.open(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_token_rules(lab: dict[str, Any]) -> None:
    """No token, a wrong one (header, cookie or query) -> 401; Bearer -> 200; ?token= -> 303 with an HttpOnly
    cookie and the token gone from the address; the cookie alone -> 200."""
    srv, token = lab["srv"], lab["token"]
    assert get(srv, "/")[0] == 401
    assert get(srv, "/api/dashboard.json")[0] == 401
    assert get(srv, "/", {"Authorization": "Bearer wrong"})[0] == 401
    assert get(srv, "/", {"Cookie": "vmbackup_token=wrong"})[0] == 401
    assert get(srv, "/?token=wrong")[0] == 401
    status, _, body = get(srv, "/", {"Authorization": f"Bearer {token}"})
    assert status == 200 and "vmbackup dashboard" in body
    status, headers, _ = get(srv, f"/?q=db&token={token}")
    assert status == 303 and headers["Location"] == "/?q=db"
    assert "HttpOnly" in headers["Set-Cookie"] and token in headers["Set-Cookie"]
    assert get(srv, "/", {"Cookie": f"vmbackup_token={token}"})[0] == 200
    assert get(srv, "/nope", {"Cookie": f"vmbackup_token={token}"})[0] == 404


def test_pages_escape_and_show_the_data(lab: dict[str, Any]) -> None:
    """The VM named web<b> is escaped everywhere; the JSON API is the dashboard's; the failed job's remediation."""
    srv, auth = lab["srv"], {"Authorization": f"Bearer {lab['token']}"}
    _, _, body = get(srv, "/", auth)
    assert "web&lt;b&gt;" in body and "web<b>" not in body
    assert lab["last"]["point_id"] in body and "INVALID_ARGUMENT" in body
    _, headers, js = get(srv, "/api/dashboard.json", auth)
    assert headers["Content-Type"].startswith("application/json") and lab["last"]["point_id"] in js
    _, _, job = get(srv, f"/job/{lab['failed']['job_id']}", auth)
    assert "What to do:" in job and "<svg" in job


def test_headless_chromium(lab: dict[str, Any]) -> None:
    """Chromium loads the overview (the real point, its consistency and boot-check, the failed VM with what to do),
    follows the VM link to the size/duration chart, and the job link to the phase timeline."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency (make setup)")
    from selenium.webdriver.common.by import By

    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    assert os.path.exists(driver_path), "chromium-driver is installed by scripts/host-setup.sh"
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-proxy-server"):
        opts.add_argument(a)
    service = webdriver.ChromeService(executable_path=driver_path)
    browser = webdriver.Chrome(options=opts, service=service)
    try:
        browser.set_page_load_timeout(60)
        srv = lab["srv"]
        browser.get(f"{srv.url}?token={lab['token']}")
        assert browser.current_url == srv.url  # the token left the address bar; the cookie carries it
        assert browser.title == "vmbackup dashboard"
        vms = browser.find_element(By.CSS_SELECTOR, "table.vms").text
        assert "web<b>" in vms and lab["last"]["point_id"] in vms and "FILE_SYSTEM" in vms and "passed" in vms
        attention = browser.find_element(By.ID, "attention").text
        assert "db1" in attention and "last backup failed: INVALID_ARGUMENT" in attention
        browser.find_element(By.LINK_TEXT, "web<b>").click()
        assert browser.find_element(By.TAG_NAME, "h1").text == "web<b>"
        chart = browser.find_element(By.CSS_SELECTOR, "svg.chart")
        assert len(chart.find_elements(By.TAG_NAME, "rect")) == 4  # 2 backups x (size, duration)
        assert lab["last"]["point_id"] in browser.find_element(By.CSS_SELECTOR, "table.points").text
        browser.find_element(By.LINK_TEXT, lab["last"]["job_id"]).click()
        timeline = browser.find_element(By.CSS_SELECTOR, "svg.chart").text
        for ph in ("freeze", "snapshot", "thaw", "copy", "commit"):
            assert ph in timeline
        browser.get(srv.url.replace("127.0.0.1", "localhost").rstrip("/") + "/?token=wrong")
        assert "401" in browser.title
    finally:
        browser.quit()


def test_bind_and_token_file(private_settings: settings.Settings) -> None:
    """A non-loopback address is refused without public; the token is created once, mode 0600, and a token file
    other users can read is refused."""
    with pytest.raises(WebBindRefused, match="not a loopback"):
        start(private_settings, "0.0.0.0:0")
    with pytest.raises(InvalidArgument, match="--http"):
        start(private_settings, "8470")
    first = load_or_create(private_settings)
    path = token_path(private_settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and load_or_create(private_settings) == first
    path.chmod(0o644)
    with pytest.raises(WebTokenInsecure):
        load_or_create(private_settings)
    path.chmod(0o600)


def test_cli_show_token_and_serve_http(private_settings: settings.Settings) -> None:
    """`serve --show-token --json` prints the file's token; `serve --http` serves the dashboard while serve runs
    and releases the port at shutdown; `serve --http 0.0.0.0:...` refuses to start."""
    env = {**os.environ, "VMBACKUP_HOME": str(private_settings.home)}
    cmd = [sys.executable, "-m", "controller.cli.main", "serve"]
    out = subprocess.run([*cmd, "--show-token", "--json"], capture_output=True, text=True, env=env, check=True)
    assert load_or_create(private_settings) in out.stdout
    bad = subprocess.run([*cmd, "--http", "0.0.0.0:8470", "--once"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "WEB_BIND_REFUSED" in bad.stderr and "--http-public" in bad.stderr
    opts = ServeOptions(http="127.0.0.1:0", prune_every=timedelta(0), verify_every=timedelta(0))
    server = Server(private_settings, opts, Runners())
    server.start()
    try:
        assert server.web_url is not None
        req = urllib.request.Request(
            server.web_url, headers={"Authorization": f"Bearer {load_or_create(private_settings)}"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200 and b"vmbackup dashboard" in r.read()
    finally:
        server.shutdown()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.web_url, timeout=2)
