"""A failing image-build step leaves no loop device and no mount behind, and reports the command's stderr."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from controller.lab import image, rootfs
from controller.lab.exceptions import ImageBuildFailed


def _loops_for(raw: Path) -> str:
    """losetup's list of loop devices backed by raw."""
    return subprocess.run(["losetup", "-j", str(raw)], capture_output=True, text=True, check=False).stdout


@pytest.mark.root
def test_failed_grub_install_cleans_up_loop_and_mounts(tmp_path: Path) -> None:
    tree = tmp_path / "rootfs"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("x\n")  # a tree without grub-install: the chroot step must fail
    raw = tmp_path / "disk.raw"
    with pytest.raises(ImageBuildFailed) as ei:
        image.make_disk(tree, raw, 64)
    assert "grub-install" in ei.value.message
    assert ei.value.details.get("stderr_tail"), ei.value.details
    assert _loops_for(raw).strip() == ""
    assert rootfs.mounts_under(tmp_path) == []
