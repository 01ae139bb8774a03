"""vmbackup guest agent: freezes a VM's filesystems (or holds VSS) around a hypervisor snapshot.

Runs as root inside the guest; ships alone (grpcio, grpcio-health-checking, protobuf, pyyaml), so it imports
nothing from ``controller``.
"""

__version__ = "0.1.0"

#: The version of the vmbackup.agent.v1 contract this agent speaks (GetInfoResponse.api_version).
API_VERSION = 1
