"""Build the agent's gRPC server: Agent + grpc.health.v1 services, mutual TLS only."""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from vmbackup.agent.v1 import agent_pb2_grpc

from agent.config import AgentConfig
from agent.exceptions import ConfigInvalid
from agent.service import AgentService

SERVICE_NAME = "vmbackup.agent.v1.Agent"


def server_credentials(cfg: AgentConfig) -> grpc.ServerCredentials:
    """mTLS credentials: the agent's cert/key, and only clients signed by the controller CA are accepted."""
    return grpc.ssl_server_credentials(
        [(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())],
        root_certificates=cfg.tls_ca.read_bytes(),
        require_client_auth=True,
    )


def build_server(cfg: AgentConfig, service: AgentService) -> tuple[grpc.Server, int]:
    """A started-ready (not started) server and the port it bound."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="rpc"))
    agent_pb2_grpc.add_AgentServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    host = f"[{cfg.listen_address}]" if ":" in cfg.listen_address else cfg.listen_address
    try:
        port = server.add_secure_port(f"{host}:{cfg.port}", server_credentials(cfg))
    except RuntimeError as exc:
        raise ConfigInvalid(f"cannot listen on {host}:{cfg.port}: {exc}") from exc
    if port == 0:
        raise ConfigInvalid(f"cannot listen on {host}:{cfg.port} (in use or not a local address)")
    return server, port
