"""File-level restore: list and copy files out of any recovery point, full or incremental, without booting it.

The point's filesystems are untrusted input, so the host kernel never parses them: libguestfs boots a small
appliance VM that has the point's disks attached read-only (writes, such as a journal replay, go to a throwaway
overlay) and does the partition, LVM and filesystem work inside it. The host only receives file contents and
metadata, and ``extract`` decides what of it is written (no device files, no setuid/setgid bits, no path or symlink
that leads out of the destination). See docs/design.md "File-level restore".
"""
