"""Policies (YAML) and protection bindings of VMs to policies."""
