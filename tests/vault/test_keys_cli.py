"""`vmbackup vault encryption ...` and `vmbackup vault key ...`: on/off per VMBACKUP_HOME, export/import, --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.cli.main import main
from controller.vault.keys import KeyStore


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    """Run one command with --json and parse its output."""
    assert main([*argv, "--json"]) == 0
    out: dict[str, object] = json.loads(capsys.readouterr().out)
    return out


def test_enable_status_export_import_disable(
    private_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """enable makes one key (again: the same; --new-key: another), export prints only the key on stdout and the
    loss warning on stderr, import into another home gives the same id, disable keeps the keys."""
    assert _json(capsys, "vault", "encryption", "status")["enabled"] is False
    on = _json(capsys, "vault", "encryption", "enable")
    assert on["created"] is True and on["enabled"] is True and "lost" in str(on["warning"])
    again = _json(capsys, "vault", "encryption", "enable")
    assert again["created"] is False and again["key_id"] == on["key_id"]
    assert main(["vault", "encryption", "enable"]) == 0
    text = capsys.readouterr().out
    assert str(on["key_id"]) in text and "WARNING" in text and "vault key export" in text
    assert main(["vault", "key", "export"]) == 0
    out, err = capsys.readouterr()
    key_text = out.strip()
    assert "lost" in err and key_text == KeyStore().get(str(on["key_id"])).read_text() and "\n" not in key_text
    (tmp_path / "key.txt").write_text(out)
    monkeypatch.setenv("VMBACKUP_HOME", str(tmp_path / "other-home"))
    got = _json(capsys, "vault", "key", "import", str(tmp_path / "key.txt"))
    assert got == {"key_id": on["key_id"], "new": True, "path": got["path"]}
    assert _json(capsys, "vault", "encryption", "status")["enabled"] is False  # imported, not current
    assert _json(capsys, "vault", "encryption", "enable", "--key", str(on["key_id"]))["current_key_id"] == on["key_id"]
    monkeypatch.setenv("VMBACKUP_HOME", str(private_home))
    new = _json(capsys, "vault", "encryption", "enable", "--new-key")
    assert new["created"] is True and new["key_id"] != on["key_id"]
    off = _json(capsys, "vault", "encryption", "disable")
    assert off["enabled"] is False and off["former_key_id"] == new["key_id"] and len(off["key_ids"]) == 2  # type: ignore[arg-type]


def test_missing_key_and_bad_import_print_code_and_remediation(
    private_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """export of a key not held is KEY_MISSING (import it); importing garbage is KEY_INVALID; exit 1."""
    assert main(["vault", "key", "export", "0123456789abcdef", "--json"]) == 1
    err = json.loads(capsys.readouterr().err)["error"]
    assert err.get("code") == "KEY_MISSING" and "vault key import" in err.get("remediation", "")
    (tmp_path / "bad.txt").write_text("hello\n")
    assert main(["vault", "key", "import", str(tmp_path / "bad.txt")]) == 1
    assert "KEY_INVALID" in "".join(capsys.readouterr())
