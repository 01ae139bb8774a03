"""Hosts: add/list/remove through the API and the CLI (remote URIs only with --no-check: no traffic leaves)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from controller.cli.main import main
from controller.errors import VmBackupError
from controller.inventory.hosts import add_host, list_hosts, remove_host


def test_default_uri_is_the_implicit_host(conn: sqlite3.Connection) -> None:
    (h,) = list_hosts(conn, "qemu:///system")
    assert h.implicit and h.uri == "qemu:///system" and h.name == "local"
    add_host(conn, "qemu+ssh://root@hv2:2222/system")
    hosts = list_hosts(conn, "qemu:///system")
    assert [(x.uri, x.name, x.implicit) for x in hosts] == [("qemu+ssh://root@hv2:2222/system", "hv2", False)]
    add_host(conn, "qemu+ssh://root@hv2:2222/system", name="second")  # re-adding renames
    assert [x.name for x in list_hosts(conn, "qemu:///system")] == ["second"]
    remove_host(conn, "qemu+ssh://root@hv2:2222/system")
    assert list_hosts(conn, "qemu:///system")[0].implicit


@pytest.mark.parametrize("bad", ["foo", "qemu:/system", "http//x", "qemu:///sys tem"])
def test_invalid_uris_are_refused(conn: sqlite3.Connection, bad: str) -> None:
    with pytest.raises(VmBackupError) as ei:
        add_host(conn, bad)
    assert ei.value.code == "INVALID_ARGUMENT"


def test_remove_unknown_host(conn: sqlite3.Connection) -> None:
    with pytest.raises(VmBackupError) as ei:
        remove_host(conn, "qemu+ssh://nobody/system")
    assert ei.value.code == "HOST_NOT_FOUND"


@pytest.mark.libvirt
def test_host_cli(conn: sqlite3.Connection, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["host", "add", "qemu:///system", "--name", "here", "--json"]) == 0  # checks the local libvirtd
    assert json.loads(capsys.readouterr().out)["name"] == "here"
    assert main(["host", "add", "qemu+ssh://root@hv9/system", "--no-check"]) == 0
    assert "hv9" in capsys.readouterr().out
    assert main(["host", "list", "--json"]) == 0
    listed = {h["uri"]: h for h in json.loads(capsys.readouterr().out)}
    assert set(listed) == {"qemu:///system", "qemu+ssh://root@hv9/system"} and listed["qemu:///system"]["vms"] == 0
    assert main(["host", "remove", "qemu+ssh://root@hv9/system"]) == 0
    capsys.readouterr()
    assert main(["host", "remove", "qemu+ssh://root@hv9/system"]) == 1
    assert "error HOST_NOT_FOUND" in capsys.readouterr().err
    assert main(["host", "add", "not-a-uri", "--no-check"]) == 1
    assert "error INVALID_ARGUMENT" in capsys.readouterr().err
