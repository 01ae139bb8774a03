"""Lab VMs: create (overlay + ext4 data disks + domain with forwarded ports), list, destroy, wait for SSH.

Everything a later command needs is in the domain's lab metadata (see controller/virt/metadata.py), so libvirt
alone is the record: no state file. ``destroy_lab_vm`` removes only the files that metadata lists.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt

from controller.lab import diskutil, domain, host, image, sshkey
from controller.lab.exceptions import (
    LabError,
    LabNameInvalid,
    LabPathNotAccessible,
    LabVmExists,
    LabVmNotFound,
    NotALabVm,
)
from controller.lab.sshexec import run as ssh_run
from controller.lab.sshexec import wait_for_ssh
from controller.settings import Settings
from controller.virt import metadata, ports
from controller.virt.connection import connection, translate
from controller.virt.domain import state_name
from controller.virt.metadata import LabMetadata

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
GiB = 1 << 30
MiB = 1 << 20
MAX_DATA_DISKS = 8

__all__ = ["LabVm", "create_lab_vm", "destroy_lab_vm", "list_lab_vms", "validate_name", "wait_for_ssh"]


@dataclass(frozen=True)
class LabVm:
    """A lab VM as libvirt and its metadata describe it."""

    name: str
    uuid: str
    state: str
    meta: LabMetadata
    boot_seconds: float | None = None  # set by create_lab_vm when it waited for SSH


def validate_name(name: str) -> str:
    """Return name if it is a valid lab VM name, else raise LabNameInvalid."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise LabNameInvalid(f"invalid lab VM name {name!r}: must match [A-Za-z0-9][A-Za-z0-9._-]{{0,62}}")
    return name


def _check_traversable(path: Path) -> None:
    """Raise LabPathNotAccessible if some parent of path is not searchable by other users (QEMU's user)."""
    for parent in [path, *path.parents]:
        if parent.exists() and not os.stat(parent).st_mode & stat.S_IXOTH:
            raise LabPathNotAccessible(
                f"{parent} is not searchable by libvirt-qemu (mode "
                f"{oct(os.stat(parent).st_mode & 0o777)}), so QEMU cannot open {path}"
            )


def _check_args(name: str, data_disks: int, memory_mib: int, vcpus: int, data_disk_gib: float) -> None:
    """Validate create arguments, raising LabNameInvalid / LabError with one clear line."""
    validate_name(name)
    if not 0 <= data_disks <= MAX_DATA_DISKS:
        raise LabError(f"--data-disks must be 0..{MAX_DATA_DISKS} (the image mounts /data1../data8)")
    if memory_mib < 256:
        raise LabError(f"--memory {memory_mib} MiB is too small (at least 256)")
    if vcpus < 1:
        raise LabError("--vcpus must be at least 1")
    if data_disk_gib <= 0:
        raise LabError("the data disk size must be positive")


def preflight(settings: Settings, name: str, data_disks: int, memory_mib: int, vcpus: int, data_disk_gib: float) -> str:
    """Every check that needs no image: arguments, virt type, name free in libvirt, free space; return virt type."""
    _check_args(name, data_disks, memory_mib, vcpus, data_disk_gib)
    virt_type = host.detect_virt_type(settings.virt_type)
    with connection(settings.uri) as conn:
        if name in {d.name() for d in conn.listAllDomains(0)}:
            raise LabVmExists(f"a domain named {name!r} already exists")
    needed = space_needed(data_disks, int(data_disk_gib * GiB))
    diskutil.require_free_space(settings.lab_dir, needed, f"lab VM {name!r}")
    return virt_type


def space_needed(data_disks: int, data_disk_bytes: int) -> int:
    """Free bytes required before creating a VM: 512 MiB headroom + 1/16 of every data disk's size."""
    return 512 * MiB + data_disks * data_disk_bytes // 16


def create_lab_vm(
    settings: Settings,
    name: str,
    *,
    data_disks: int = 0,
    memory_mib: int = 768,
    vcpus: int = 1,
    disk_size_gib: float | None = None,
    data_disk_gib: float = 1.0,
    wait: bool = True,
    ssh_timeout: float = 240.0,
    base_image: Path | None = None,
) -> LabVm:
    """Define and start a lab VM from the cached image; with wait, block until SSH answers."""
    virt_type = preflight(settings, name, data_disks, memory_mib, vcpus, data_disk_gib)
    base = base_image or image.cached_image(settings).path
    vm_dir = settings.lab_dir / "vms" / name
    data_bytes = int(data_disk_gib * GiB)
    root_bytes = int(disk_size_gib * GiB) if disk_size_gib else None
    if root_bytes is not None and root_bytes < diskutil.virtual_size(base):
        raise LabError(f"--disk-size {disk_size_gib} GiB is smaller than the image ({diskutil.virtual_size(base)} B)")
    with connection(settings.uri) as conn:
        if name in {d.name() for d in conn.listAllDomains(0)}:
            raise LabVmExists(f"a domain named {name!r} already exists")
        try:
            vm_dir.mkdir(parents=True)
        except FileExistsError as e:
            raise LabVmExists(f"{vm_dir} already exists (left over from an earlier VM?); remove it first") from e
        for d in (vm_dir, vm_dir.parent, settings.lab_dir):
            os.chmod(d, 0o755)
        _check_traversable(vm_dir)
        files: list[str] = []
        dom = None
        try:
            overlay = vm_dir / "root.qcow2"
            diskutil.make_overlay(base, overlay, root_bytes)
            files.append(str(overlay))
            for k in range(1, data_disks + 1):
                path = vm_dir / f"data{k}.qcow2"
                files.append(str(path))
                diskutil.make_data_disk(path, data_bytes, f"data{k}")
            console = vm_dir / "console.log"
            files.append(str(console))
            with ports.port_lock():
                ssh_port, agent_port = ports.pick_ports(2, avoid=ports.ports_of_domains(conn))
                meta = LabMetadata(
                    ssh_host="127.0.0.1",
                    ssh_port=ssh_port,
                    ssh_user="root",
                    ssh_key=str(sshkey.key_path(settings.lab_dir)),
                    agent_host="127.0.0.1",
                    agent_port=agent_port,
                    console_path=str(console),
                    files=tuple(files),
                    vm_dir=str(vm_dir),
                    base_image=str(base),
                    virt_type=virt_type,
                )
                spec = domain.DomainSpec(name, virt_type, memory_mib, vcpus, tuple(files[: 1 + data_disks]), meta)
                dom = _libvirt(lambda: conn.defineXML(domain.build_xml(spec)), f"define {name}")
            _libvirt(dom.create, f"start {name}")
        except BaseException:
            if dom is not None:
                _undefine(dom)
            _remove_files(files, vm_dir)
            raise
        boot = wait_for_ssh(meta, ssh_timeout) if wait else None
        if wait and root_bytes:
            grow_root(meta)
        return LabVm(name=name, uuid=dom.UUIDString(), state=state_name(dom), meta=meta, boot_seconds=boot)


# Runs in the guest: stretch MBR partition 1 to the end of vda (the image has no sfdisk), then the kernel's
# view of it (partx, util-linux) and the ext4 inside (resize2fs, online).
_GROW_PY = """
import os, struct
fd = os.open('/dev/vda', os.O_RDWR)
mbr = bytearray(os.pread(fd, 512, 0))
start, count = struct.unpack_from('<II', mbr, 446 + 8)
total = int(open('/sys/block/vda/size').read())
if total - start > count + 2048:
    struct.pack_into('<I', mbr, 446 + 12, total - start)
    os.pwrite(fd, bytes(mbr), 0)
    os.fsync(fd)
"""


def grow_root(meta: LabMetadata) -> None:
    """Grow the guest's root partition and ext4 to the (bigger) virtual size of its overlay, over SSH."""
    cmd = (
        f'python3 -c "{_GROW_PY}" && partx -u -n 1 /dev/vda && resize2fs /dev/vda1; rc=$?; '
        "systemctl reset-failed lab-growroot.service 2>/dev/null; exit $rc"
    )
    rc, _out, err = ssh_run(meta, cmd, timeout=120)
    if rc != 0:
        raise LabError(f"growing the root filesystem failed: {err.strip()[-300:]}")


def _libvirt(call: object, context: str) -> libvirt.virDomain:
    """Call a libvirt function, translating libvirtError to the virt layer's typed errors."""
    try:
        return call()  # type: ignore[operator]
    except libvirt.libvirtError as e:
        raise translate(e, context) from e


def _undefine(dom: libvirt.virDomain) -> None:
    """Stop (if running) and undefine a domain, ignoring 'already gone'."""
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    flags = (
        libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    )
    with contextlib.suppress(libvirt.libvirtError):
        dom.undefineFlags(flags)


def _remove_files(files: list[str] | tuple[str, ...], vm_dir: Path | None) -> None:
    """Delete the listed files, then vm_dir if it is left empty."""
    for f in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)
    if vm_dir is not None:
        with contextlib.suppress(OSError):
            vm_dir.rmdir()


def destroy_lab_vm(settings: Settings, name: str) -> LabMetadata:
    """Destroy and undefine a lab VM and delete only the files its metadata lists; return that metadata.

    A listed file that another defined domain uses (e.g. a restored copy whose metadata still names the
    original's files) is left in place.
    """
    with connection(settings.uri) as conn:
        dom, meta = _lab_domain(conn, name, "has no vmbackup lab metadata; refusing to destroy it")
        _undefine(dom)
        with contextlib.suppress(libvirt.libvirtError):
            conn.lookupByName(name)
            raise LabError(f"could not undefine {name!r}")
        in_use = files_of_domains(conn)
    _remove_files([f for f in meta.files if f not in in_use], Path(meta.vm_dir) if meta.vm_dir else None)
    return meta


def files_of_domains(conn: libvirt.virConnect) -> set[str]:
    """Every file path (disk sources, backing stores, serial logs) named in a defined domain's XML."""
    used: set[str] = set()
    for dom in conn.listAllDomains(0):
        with contextlib.suppress(libvirt.libvirtError):
            xml = dom.XMLDesc(0)
            used.update(re.findall(r"<source (?:file|path)=['\"]([^'\"]+)['\"]", xml))
    return used


def list_lab_vms(settings: Settings) -> list[LabVm]:
    """Every domain on settings.uri that carries lab metadata, sorted by name."""
    out: list[LabVm] = []
    with connection(settings.uri) as conn:
        for dom in conn.listAllDomains(0):
            try:
                meta = metadata.read(dom)
                if meta is not None:
                    out.append(LabVm(dom.name(), dom.UUIDString(), state_name(dom), meta))
            except libvirt.libvirtError:
                continue  # undefined while we looked
    return sorted(out, key=lambda v: v.name)


def get_lab_vm(settings: Settings, name: str) -> LabVm:
    """One lab VM by name, or LabVmNotFound / NotALabVm."""
    with connection(settings.uri) as conn:
        dom, meta = _lab_domain(conn, name, "is not a lab VM")
        return LabVm(dom.name(), dom.UUIDString(), state_name(dom), meta)


def _lab_domain(conn: libvirt.virConnect, name: str, not_lab: str) -> tuple[libvirt.virDomain, LabMetadata]:
    """A domain by name with its lab metadata: LabVmNotFound, or NotALabVm ("<name> <not_lab>")."""
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError as e:
        raise LabVmNotFound(f"no domain named {name!r}") from e
    meta = metadata.read(dom)
    if meta is None:
        raise NotALabVm(f"{name!r} {not_lab}")
    return dom, meta


def wait_until_gone(meta: LabMetadata, timeout: float = 10.0) -> bool:
    """True once neither forwarded port accepts binds failing (QEMU has released them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(ports.bind_free(p) for p in meta.ports()):
            return True
        time.sleep(0.2)
    return False
