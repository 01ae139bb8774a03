"""Thin helpers over libvirt-python: connections, domain XML, and translation of libvirt errors."""
