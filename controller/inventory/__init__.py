"""Hosts (libvirt URIs), discovery of their domains, and the VM inventory (the `vms` table)."""
