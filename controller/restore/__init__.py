"""Restore and boot-check: put a recovery point back as a new VM, as disk images, or over an existing VM.

``restore.Restorer`` runs a restore job; ``bootcheck.BootChecker`` boots a point in an isolated throw-away VM
and judges it (``probes``: console log, agent, SSH command; ``fsck``: filesystem checks); ``undo`` and
``sweep`` remove what a failed or abandoned restore left behind. Errors are in ``exceptions``.
"""
