"""The backup engine: quiesce through the agent, snapshot every disk atomically, thaw, copy into the vault, commit back.

``engine.BackupEngine`` runs the whole flow; ``snapshot`` holds the libvirt primitives; ``intent`` the durable
record that lets ``recovery.recover`` finish or undo the work of a controller that died half-way.
"""
