"""File-level restore on real images, no VM: ext4 + vfat partitions, a whole-disk xfs and LVM in a full point, an
incremental point over it, and a hostile tree whose links, setuid bits and device nodes must not reach the host.

One appliance per point (libguestfs boots a small VM: ~15-20 s under TCG), so the points are built once per module.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.cli.files_cmd import _safe
from controller.errors import InvalidArgument
from controller.filerestore.appliance import Appliance, Filesystem
from controller.filerestore.exceptions import FileRestoreTargetInvalid, FilesystemAmbiguous, GuestPathNotFound
from controller.filerestore.extract import link_stays_inside, safe_name
from controller.filerestore.session import PointFiles, open_point, split_guest_path
from controller.vault import RecoveryPoint, Vault
from controller.vault.exceptions import ChecksumMismatch
from tests.filerestore import images as im
from tests.vault.helpers import run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds device nodes and owned files: needs root")


@dataclass
class Points:
    """The module's vault, its two points and the reference files."""

    vault: Vault
    full: RecoveryPoint
    inc: RecoveryPoint
    tree: Path
    new_file: Path


@pytest.fixture(scope="module")
def points(tmp_path_factory: pytest.TempPathFactory) -> Points:
    """A full point (vda: ext4 + vfat, vdb: xfs, vdc: LVM vg0/root ext4) and an incremental over it whose ext4
    gained data/new.bin."""
    work = tmp_path_factory.mktemp("fr")
    tree = work / "tree"
    im.ext4_tree(tree)
    vda = im.partitioned_disk(tree, work)
    vdb = im.xfs_disk(tree / "data" / "owned.txt", work)
    vdc = im.lvm_disk(work, b"on a logical volume\n")
    vault = Vault(work / "vault")
    vm = str(uuid.uuid4())
    meta = {"vm": {"uuid": vm, "name": "fr", "host": "qemu:///system"}, "consistency": "CRASH"}
    with vault.new_point(vm) as w:  # vdb and vdc stored compressed (zstd qcow2), vda plain: both read alike
        w.copy_disk("vda", vda)
        assert w.copy_disk("vdb", vdb, compression="zstd").compression == "zstd"
        assert w.copy_disk("vdc", vdc, compression="zstd").compression == "zstd"
        w.write_domain_xml(f"<domain><name>fr</name><uuid>{vm}</uuid></domain>")
        full = w.publish(dict(meta))
    tree2 = work / "tree2"
    new = os.urandom(3 * im.MiB + 17)
    im.ext4_tree(tree2, {"new.bin": new})
    (tree2 / "data" / "big.bin").write_bytes((tree / "data" / "big.bin").read_bytes())
    p1v2 = im.ext4_image(tree2, work / "p1v2.img")

    def write(dst: Path, backing: str) -> int:
        """The 'changed clusters': partition 1 rewritten with the second tree."""
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, str(dst))
        run("qemu-io", "-f", "qcow2", "-c", f"write -s {p1v2} {im.PART1} {im.PART1_SIZE}", str(dst))
        return im.PART1_SIZE

    def unchanged(dst: Path, backing: str) -> int:
        """No change on vdb."""
        run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, str(dst))
        return 0

    with vault.new_point(vm) as w:
        w.add_incremental_disk("vda", full, write, str(vda), im.DISK_SIZE)
        w.add_incremental_disk("vdb", full, unchanged, str(vdb), 320 * im.MiB)
        w.add_incremental_disk("vdc", full, unchanged, str(vdc), 64 * im.MiB)
        w.write_domain_xml(f"<domain><name>fr</name><uuid>{vm}</uuid></domain>")
        inc = w.publish({**meta, "parent": full.point_id, "chain_depth": 1})
    (work / "new.bin").write_bytes(new)
    return Points(vault, full, inc, tree, work / "new.bin")


@pytest.fixture(scope="module")
def full_files(points: Points) -> Iterator[PointFiles]:
    """The full point opened once (both disks)."""
    with open_point(points.full.point_id, vault=points.vault) as pf:
        yield pf


def _digests(v: Vault) -> dict[str, str]:
    """sha256 of every stored file in the vault."""
    return {str(p): im.sha256(p) for p in sorted(v.root.rglob("*.qcow2"))}


def test_filesystems_are_named_by_disk_and_partition(full_files: PointFiles, tmp_path: Path) -> None:
    """vda1 ext4, vda2 vfat, vdb xfs, vg0/root (LVM) ext4; a bare path is the guest's OS view (its fstab mounts
    the vfat at /boot/efi)."""
    got = {f.name: f.fstype for f in full_files.filesystems()}
    assert got == {"vda1": "ext4", "vda2": "vfat", "vdb": "xfs", "vg0/root": "ext4"}
    assert {"etc", "data", "boot"} <= {e.name for e in full_files.ls("/")}
    full_files.get(["/etc/hostname", "/boot/efi/DOS/NOTE.TXT"], tmp_path / "os")
    assert (tmp_path / "os" / "hostname").read_bytes() == b"point-host\n"
    assert (tmp_path / "os" / "NOTE.TXT").read_bytes() == b"from vfat\n"


class _FakeG:
    """A libguestfs handle with no OS found and two filesystems."""

    def umount_all(self) -> None:
        """Nothing mounted."""

    def inspect_os(self) -> list[str]:
        """No operating system."""
        return []


def test_a_bare_path_without_an_os_is_ambiguous() -> None:
    """Several filesystems and no OS: the user must name one (FILESYSTEM_AMBIGUOUS lists them)."""
    app = Appliance([])
    app.g = _FakeG()
    app._fs = [Filesystem("vda1", "/dev/sda1", "ext4", 1, ""), Filesystem("vdb", "/dev/sdb", "xfs", 1, "")]
    with pytest.raises(FilesystemAmbiguous) as e:
        app.mount(None)
    assert e.value.details["filesystems"] == ["vda1", "vdb"]


def test_ls_shows_metadata(full_files: PointFiles) -> None:
    """Entries carry type, mode, owner, size, mtime and symlink targets as the filesystem records them."""
    by_name = {e.name: e for e in full_files.ls("vda1:/data")}
    assert by_name["owned.txt"].uid == 1234 and by_name["owned.txt"].gid == 2345
    assert stat.S_IMODE(by_name["owned.txt"].mode) == 0o640
    assert by_name["big.bin"].size == 10 * im.MiB and by_name["big.bin"].mtime_ns == im.MTIME * 10**9
    evil = {e.name: e for e in full_files.ls("vda1:/evil")}
    assert evil["shadow"].kind == "symlink" and evil["shadow"].target == "/etc/shadow"
    assert evil["null"].kind == "char-device" and evil["fifo"].kind == "fifo"
    with pytest.raises(GuestPathNotFound):
        full_files.ls("vda1:/nope")
    with pytest.raises(GuestPathNotFound):
        full_files.get(["vda1:/nope"], full_files_out := Path(f"/tmp/vmb-fr-{os.getpid()}"))
    assert not full_files_out.exists()


def test_get_keeps_content_owner_mode_mtime(full_files: PointFiles, points: Points, tmp_path: Path) -> None:
    """Files from ext4, vfat and xfs come out byte-identical with owner, mode and mtime."""
    res = full_files.get(["vda1:/data", "vda2:/DOS/NOTE.TXT", "vdb:/x/file.bin", "vg0/root:/lvm.txt"], tmp_path / "out")
    out = tmp_path / "out"
    assert im.sha256(out / "data" / "big.bin") == im.sha256(points.tree / "data" / "big.bin")
    st = (out / "data" / "owned.txt").lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), int(st.st_mtime)) == (1234, 2345, 0o640, im.MTIME)
    assert int((out / "data").stat().st_mtime) == im.MTIME
    assert (out / "NOTE.TXT").read_bytes() == b"from vfat\n"
    assert (out / "file.bin").read_bytes() == b"mine\n" and (out / "file.bin").stat().st_uid == 7
    assert (out / "lvm.txt").read_bytes() == b"on a logical volume\n"
    assert (res.files, res.dirs) == (5, 1) and res.bytes == 10 * im.MiB + 5 * 2 + 10 + 20


def test_hostile_tree_neither_escapes_nor_is_honoured(full_files: PointFiles, tmp_path: Path) -> None:
    """Links out of --to are not created (absolute, relative climbing, through another link); setuid/setgid are
    dropped; the device node and fifo are not created; the link that stays inside is."""
    res = full_files.get(["vda1:/evil"], tmp_path / "out")
    evil = tmp_path / "out" / "evil"
    for name in ("shadow", "up", "climb", "null", "fifo"):
        assert not os.path.lexists(evil / name), name
    skipped = {s["path"] for s in res.skipped}
    assert {"/evil/shadow", "/evil/up", "/evil/climb", "/evil/null", "/evil/fifo"} <= skipped
    assert os.readlink(evil / "ok") == "../data/owned.txt" and os.readlink(evil / "self") == "."
    assert stat.S_IMODE((evil / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((evil / "sgid-dir").stat().st_mode) == 0o775
    assert {"/evil/suid", "/evil/sgid-dir"} <= set(res.dropped_bits)
    for p in (tmp_path / "out").rglob("*"):
        assert os.path.realpath(p).startswith(str((tmp_path / "out").resolve())), p


def test_get_refuses_a_nonempty_destination(full_files: PointFiles, tmp_path: Path) -> None:
    """--to must be new or empty: nothing is written over."""
    (tmp_path / "keep").write_text("x")
    with pytest.raises(FileRestoreTargetInvalid):
        full_files.get(["vda1:/etc/hostname"], tmp_path)


def test_incremental_point_through_the_cli(points: Points, tmp_path: Path) -> None:
    """`files get --json` from the incremental point: the new file and an old one, identical; vault unchanged."""
    before = _digests(points.vault)
    env = {**os.environ, "VMBACKUP_VAULT": str(points.vault.root), "VMBACKUP_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "controller.cli.main", "files", "get", points.inc.point_id, "--disk", "vda",
           "vda1:/data/new.bin", "vda1:/data/big.bin", "--to", str(tmp_path / "out"), "--json"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["files"] == 2 and out["skipped"] == []
    assert im.sha256(tmp_path / "out" / "new.bin") == im.sha256(points.new_file)
    assert im.sha256(tmp_path / "out" / "big.bin") == im.sha256(points.tree / "data" / "big.bin")
    assert _digests(points.vault) == before


def test_a_damaged_parent_fails_before_reading(points: Points, tmp_path: Path) -> None:
    """A flipped byte in the full point's vda: opening the incremental fails with CHECKSUM_MISMATCH naming it."""
    path = points.vault.disk_path(points.full, points.full.manifest.disks[0])
    data = bytearray(path.read_bytes())
    try:
        with open(path, "r+b") as f:
            f.seek(im.PART1 // 2)
            f.write(bytes([data[im.PART1 // 2] ^ 0xFF]))
        with pytest.raises(ChecksumMismatch) as e, open_point(points.inc.point_id, "vda", vault=points.vault):
            pass
        assert e.value.details["point_id"] == points.full.point_id
    finally:
        path.write_bytes(bytes(data))


def test_names_from_the_point_print_safely() -> None:
    """Control characters and rich markup in a name are shown escaped, not interpreted."""
    assert _safe("a\x1b[2Jb\n") == "a\\x1b[2Jb\\x0a" and _safe("[red]x") == "\\[red]x"


def test_names_and_links_checked_lexically() -> None:
    """The pure checks: unsafe names, links leaving the root, guest path syntax."""
    assert not any(safe_name(n) for n in ("", ".", "..", "a/b", "a\0"))
    assert safe_name("..a") and safe_name("a..")
    assert link_stays_inside("d/l", "../x") and link_stays_inside("d/l", "e/../../y")
    assert not link_stays_inside("d/l", "../../x") and not link_stays_inside("l", "/etc/shadow")
    assert split_guest_path("vda1:/a/../../etc") == ("vda1", "/etc")
    assert split_guest_path("/x/./y/") == (None, "/x/y")
    with pytest.raises(InvalidArgument):
        split_guest_path("etc/passwd")


def test_names_that_are_not_utf8_are_listed_escaped_and_restored_with_their_bytes(
    full_files: PointFiles, tmp_path: Path
) -> None:
    """/names holds a latin-1 file name, a link to it, a non-UTF-8 directory (a file, a UTF-8 file and a link
    inside): ls shows them escaped (with their exact bytes in hex), get writes them with their own bytes, nothing
    fails or is skipped."""
    by_name = {e.name: e for e in full_files.ls("vda1:/names")}
    assert set(by_name) == {im.RAW_FILE, im.RAW_DIR, "plain.txt", "rawlink"}
    assert by_name["rawlink"].target == im.RAW_FILE
    raw = by_name[im.RAW_FILE]
    assert raw.kind == "file" and raw.size == 13 and stat.S_IMODE(raw.mode) == 0o600
    assert raw.mtime_ns == im.MTIME * 10**9
    d = raw.to_dict()
    assert d["name"] == "caf\\xe9.txt" and d["name_hex"] == b"caf\xe9.txt".hex() and "\\udc" not in json.dumps(d)
    inner = {e.name: e for e in full_files.ls(f"vda1:/names/{im.RAW_DIR}")}
    assert set(inner) == {im.RAW_INNER, "ok.txt", "link"} and inner["link"].target == im.RAW_INNER
    assert _safe(im.RAW_FILE) == "caf\\xe9.txt"

    res = full_files.get(["vda1:/names"], tmp_path / "out")
    out = os.fsencode(tmp_path / "out" / "names")
    assert res.skipped == [] and (res.files, res.dirs, res.symlinks) == (4, 2, 2), res
    assert sorted(os.listdir(out)) == sorted([b"caf\xe9.txt", b"d\xff", b"plain.txt", b"rawlink"])
    assert os.readlink(os.path.join(out, b"rawlink")) == b"caf\xe9.txt"
    assert _read(out, b"caf\xe9.txt") == b"latin-1 name\n"
    st = os.lstat(os.path.join(out, b"caf\xe9.txt"))
    assert (stat.S_IMODE(st.st_mode), int(st.st_mtime)) == (0o600, im.MTIME)
    assert _read(out, b"d\xff", b"in\xfe.bin") == b"inner\n"
    assert os.readlink(os.path.join(out, b"d\xff", b"link")) == b"in\xfe.bin"
    assert "\\udc" not in json.dumps(res.to_dict())

    one = full_files.get([f"vda1:/names/{im.RAW_DIR}/{im.RAW_INNER}"], tmp_path / "one")  # asked for by its name
    assert one.files == 1 and _read(os.fsencode(tmp_path / "one"), b"in\xfe.bin") == b"inner\n"


def _read(*parts: bytes) -> bytes:
    """The content of the local file at the joined byte path."""
    with open(os.path.join(*parts), "rb") as f:
        return f.read()


def test_files_options_may_follow_the_positionals() -> None:
    """`files ls POINT --disk vda PATH` and `files get POINT P1 --to D P2 --disk vdb`: options anywhere."""
    from controller.cli.main import build_parser

    parser = build_parser("files")
    a = parser.parse_args(["files", "ls", "P", "--disk", "vda", "vda1:/etc", "--json"])
    assert (a.point, a.path, a.disk, a.json) == ("P", "vda1:/etc", "vda", True)
    a = parser.parse_args(["files", "ls", "--disk", "vdb", "P"])
    assert (a.point, a.path, a.disk) == ("P", None, "vdb")
    a = parser.parse_args(["files", "get", "P", "/a", "--to", "D", "/b", "--disk", "vdb"])
    assert (a.point, a.paths, a.to, a.disk) == ("P", ["/a", "/b"], "D", "vdb")
    with pytest.raises(SystemExit):
        parser.parse_args(["files", "ls", "P", "/a", "/b"])
