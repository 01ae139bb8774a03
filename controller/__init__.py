"""vmbackup controller: discovers, registers, protects, backs up, restores and boot-checks libvirt VMs."""

__version__ = "0.1.0"
