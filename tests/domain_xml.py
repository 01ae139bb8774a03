"""Domain XML fragments for tests that build domains from strings: one spelling of each device kind.

Every fragment is a libvirt ``<devices>`` child; compose them inside :func:`domain`. Nothing here talks to libvirt.
"""

from __future__ import annotations


def domain(name: str, devices: str, *, uuid: str = "", extra: str = "") -> str:
    """A small TCG domain (64 MiB, i440fx) holding the given devices."""
    uuid_xml = f"\n  <uuid>{uuid}</uuid>" if uuid else ""
    return f"""<domain type='qemu'>
  <name>{name}</name>{uuid_xml}
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>{extra}
  <devices>{devices}
  </devices>
</domain>"""


def file_disk(path: str, target: str, fmt: str = "qcow2", *, readonly: bool = False) -> str:
    """A file-backed disk."""
    ro = "<readonly/>" if readonly else ""
    return f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'/><source file='{path}'/><target dev='{target}' bus='virtio'/>{ro}
    </disk>"""


def block_disk(dev: str, target: str, driver_extra: str = "") -> str:
    """A block-device disk (raw)."""
    return f"""
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'{driver_extra}/><source dev='{dev}'/><target dev='{target}' bus='virtio'/>
    </disk>"""


def volume_disk(pool: str, volume: str, target: str) -> str:
    """A disk on a storage-pool volume (qcow2)."""
    return f"""
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/><source pool='{pool}' volume='{volume}'/><target dev='{target}' bus='virtio'/>
    </disk>"""


def rbd_disk(name: str, host: str, target: str, auth: str = "") -> str:
    """A Ceph RBD network disk (defining it contacts nothing)."""
    return f"""
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>{auth}
      <source protocol='rbd' name='{name}'><host name='{host}' port='6789'/></source>
      <target dev='{target}' bus='virtio'/>
    </disk>"""


def cdrom(target: str = "sda", source: str = "") -> str:
    """A read-only SATA cdrom, empty or with an image."""
    src = f"<source file='{source}'/>" if source else ""
    return f"""
    <disk type='file' device='cdrom'>{src}<target dev='{target}' bus='sata'/><readonly/></disk>"""


def virtiofs_share(src: str, tag: str) -> str:
    """A virtiofs filesystem share."""
    return f"""
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='virtiofs'/><source dir='{src}'/><target dir='{tag}'/>
    </filesystem>"""


#: A PCI device passed through from the host (bus 0x03).
PCI_HOSTDEV = """
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source>
    </hostdev>"""
