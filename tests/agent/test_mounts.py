"""mountinfo parsing and the freeze plan: order, eligibility, bind mounts (no root needed)."""

from __future__ import annotations

from agent.quiesce.mounts import freeze_plan, ineligible_reason, parse_mountinfo

SAMPLE = """\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
23 1 0:22 / /sys rw,nosuid shared:2 - sysfs sysfs rw
25 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
26 25 0:24 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,size=100k
30 25 254:17 / /data rw,relatime shared:20 - xfs /dev/vdb1 rw,attr2
31 30 254:33 / /data/deep\\040dir rw,relatime shared:21 - ext4 /dev/vdc1 rw
32 25 0:40 / /mnt/nfs rw - nfs4 srv:/export rw,vers=4.2
33 25 254:49 / /srv/ro ro,relatime - ext4 /dev/vdd1 ro
34 25 254:17 /sub /bind rw,relatime - xfs /dev/vdb1 rw,attr2
35 25 0:50 / /var/lib/docker/overlay rw - overlay overlay rw,lowerdir=/a
36 25 0:51 / /home/u/fuse rw - fuse.sshfs u@h:/ rw
"""


def test_parse_fields_and_escapes() -> None:
    """Fields come out right and \\040 becomes a space."""
    mounts = parse_mountinfo(SAMPLE)
    assert len(mounts) == 11
    deep = next(m for m in mounts if m.mount_id == 31)
    assert deep.mount_point == "/data/deep dir"
    assert deep.dev == (254, 33) and deep.fs_type == "ext4" and deep.source == "/dev/vdc1"
    assert next(m for m in mounts if m.mount_id == 33).read_only


def test_plan_order_is_reverse_mount_order_and_skips_ineligible() -> None:
    """Nested mounts freeze before their parents; virtual/memory/network/ro/overlay/fuse/bind are skipped."""
    plan, skipped = freeze_plan(parse_mountinfo(SAMPLE))
    assert [m.mount_point for m in plan] == ["/data/deep dir", "/data", "/"]
    reasons = dict(skipped)
    assert "virtual" in reasons["/proc"] and "virtual" in reasons["/sys"]
    assert "in-memory" in reasons["/run"]
    assert "network" in reasons["/mnt/nfs"]
    assert "read-only" in reasons["/srv/ro"]
    assert "stacked" in reasons["/var/lib/docker/overlay"]
    assert "FUSE" in reasons["/home/u/fuse"]
    assert "same filesystem as /data" in reasons["/bind"]


def test_hidden_mount_is_not_planned() -> None:
    """Only the top mount of a stacked mount point is reachable, so only it is frozen."""
    text = (
        "25 1 254:1 / / rw - ext4 /dev/vda1 rw\n"
        "40 25 254:2 / /x rw - ext4 /dev/vdb rw\n"
        "41 25 254:3 / /x rw - ext4 /dev/vdc rw\n"
    )
    plan, _ = freeze_plan(parse_mountinfo(text))
    assert [(m.mount_point, m.dev) for m in plan] == [("/x", (254, 3)), ("/", (254, 1))]


def test_non_block_source_is_ineligible() -> None:
    """A filesystem not backed by /dev/... is not frozen."""
    (m,) = parse_mountinfo("50 1 0:60 / /z rw - btrfs none rw\n")
    assert "block device" in ineligible_reason(m)
