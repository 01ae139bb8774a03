"""`vmbackup vault encryption enable|disable|status` and `vmbackup vault key export|import` (controller/vault/keys.py).

Registered under `vault` by vault_cmd.py. A key is printed only by `vault key export`, on purpose.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controller.cli import output
from controller.vault.key_exceptions import KeyInvalid
from controller.vault.keys import KeyStore

LOSS_WARNING = (
    "WARNING: points encrypted with this key can ONLY be read with it. If the key is lost (this controller's disk, "
    "$VMBACKUP_HOME/pki/) those points are lost for good. Keep a copy OUTSIDE this host and outside the vault."
)


def run_enable(args: argparse.Namespace) -> int:
    """Make new points LUKS-encrypted: keep the current key, or a new one (--new-key), or an imported one (--key)."""
    store = KeyStore()
    cur = store.current()
    if args.key:
        key, created = store.enable(args.key), False
    elif cur is not None and not args.new_key:
        key, created = cur, False
    else:
        key, created = store.enable(), True
    if args.json:
        output.print_json({**store.status(), "key_id": key.key_id, "created": created, "warning": LOSS_WARNING})
        return 0
    what = "a new vault key" if created else "vault key"
    print(f"encryption at rest is on: new points are LUKS-encrypted with {what} {key.key_id}")
    print(f"  key file: {key.path} (0600; never stored in the vault)")
    print(LOSS_WARNING)
    print(f"Export it now and keep it safe: vmbackup vault key export {key.key_id} > vault-key-{key.key_id}.txt")
    return 0


def run_disable(args: argparse.Namespace) -> int:
    """New points are stored unencrypted; existing points and every key stay as they are."""
    former = KeyStore().disable()
    if args.json:
        output.print_json({**KeyStore().status(), "former_key_id": former})
        return 0
    print("encryption at rest is off: new points are stored unencrypted" + (
        f" (key {former} is kept: the points encrypted with it need it)" if former else " (it was off)"))  # fmt: skip
    return 0


def run_status(args: argparse.Namespace) -> int:
    """Whether new points are encrypted, with which key, which keys this controller holds, which keys the vault's
    points need (points_by_key: key id -> number of points) and which of those are missing (import them)."""
    from controller.vault import Vault

    st = KeyStore().status()
    by_key: dict[str, int] = {}
    for p in Vault().list_points(include_deleted=True):
        for kid in {d.key_id for d in p.manifest.disks if d.key_id}:
            by_key[kid] = by_key.get(kid, 0) + 1
    st.update(points_by_key=dict(sorted(by_key.items())), missing_key_ids=sorted(set(by_key) - set(st["key_ids"])))
    if args.json:
        output.print_json(st)
        return 0
    print(f"encryption at rest: {'on, key ' + st['current_key_id'] if st['enabled'] else 'off'}")
    print(f"keys held ({st['key_dir']}): {', '.join(st['key_ids']) or 'none'}")
    print("points per key: " + (", ".join(f"{k} {n}" for k, n in by_key.items()) or "no encrypted point"))
    if st["missing_key_ids"]:
        print(f"MISSING keys (their points cannot be read): {', '.join(st['missing_key_ids'])}; "
              "import them with `vmbackup vault key import FILE`")  # fmt: skip
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Print a key (default: the current one) with the warning; the text `vault key import` takes back."""
    key, text = KeyStore().export(args.key_id)
    if args.json:
        output.print_json({"key_id": key.key_id, "key": text, "warning": LOSS_WARNING})
        return 0
    print(f"{LOSS_WARNING}\nvault key {key.key_id} (stdout holds only the key: qemu reads such a file as it is)",
          file=sys.stderr)  # fmt: skip
    print(text)
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Store a key from a file (or stdin: -) so points encrypted with it can be read; it does not become current."""
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise KeyInvalid(f"cannot read the key from {args.file}: {e}") from e
    key, new = KeyStore().import_key(text)
    if args.json:
        output.print_json({"key_id": key.key_id, "new": new, "path": str(key.path)})
        return 0
    print(f"vault key {key.key_id} {'imported' if new else 'was already held'} ({key.path})")
    print(f"to encrypt new points with it: vmbackup vault encryption enable --key {key.key_id}")
    return 0


def add_subparsers(vs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `vault encryption ...` and `vault key ...` on the `vault` subparsers."""
    enc = vs.add_parser(
        "encryption",
        help="encryption at rest of new points (LUKS qcow2, key outside the vault)",
        epilog=output.examples("vmbackup vault encryption enable", "vmbackup vault encryption status"),
    )
    es = enc.add_subparsers(dest="encryption_command", metavar="ACTION", required=True)
    en = es.add_parser(
        "enable",
        help="encrypt new points (creates a vault key the first time; export it!)",
        epilog=output.examples(
            "vmbackup vault encryption enable && vmbackup vault key export > vault-key.txt",
            "vmbackup vault encryption enable --new-key",
        ),
    )
    en.add_argument("--new-key", action="store_true", help="a new key even when one is current (key rotation)")
    en.add_argument("--key", metavar="KEY_ID", help="use this key (imported with `vault key import`)")
    dis = es.add_parser(
        "disable",
        help="store new points unencrypted (keys and encrypted points stay)",
        epilog=output.examples("vmbackup vault encryption disable"),
    )
    st = es.add_parser(
        "status",
        help="on or off, the current key id, the keys held",
        epilog=output.examples("vmbackup vault encryption status --json"),
    )
    for p, fn in ((en, run_enable), (dis, run_disable), (st, run_status)):
        output.add_json_flag(p)
        p.set_defaults(func=fn)
    key = vs.add_parser(
        "key",
        help="export or import vault keys",
        epilog=output.examples("vmbackup vault key export > vault-key.txt", "vmbackup vault key import vault-key.txt"),
    )
    ks = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    ex = ks.add_parser(
        "export",
        help="print a vault key (losing it loses the points encrypted with it)",
        epilog=output.examples("vmbackup vault key export > vault-key.txt"),
    )
    ex.add_argument("key_id", nargs="?", metavar="KEY_ID", help="default: the current key")
    im = ks.add_parser(
        "import",
        help="add a vault key from `vault key export` output (FILE, or - for stdin)",
        epilog=output.examples(
            "vmbackup vault key import vault-key.txt", "vmbackup vault key import - < vault-key.txt"
        ),
    )
    im.add_argument("file", metavar="FILE", help="the exported text; - reads stdin")
    for p, fn in ((ex, run_export), (im, run_import)):
        output.add_json_flag(p)
        p.set_defaults(func=fn)
