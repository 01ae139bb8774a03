"""Boot-check's "booted" verdict (probes.wait_for_boot): the first sufficient proof wins, the console's login prompt or
the guest's SSH banner; a port that accepts and closes without a banner (QEMU's user-mode forward before sshd runs)
proves nothing. Host-only: a console file and local sockets stand in for the guest."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.restore import probes


def _serve(sock: socket.socket, banner: bytes | None, stop: threading.Event) -> None:
    """Accept connections; send banner (or close at once, like a forward with nothing behind it)."""
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        with conn:
            if banner is not None:
                conn.sendall(banner)


@pytest.fixture
def server() -> Iterator[tuple[socket.socket, threading.Event]]:
    """A listening socket on 127.0.0.1 and the event that ends its server thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    stop = threading.Event()
    yield sock, stop
    stop.set()
    sock.close()


def _start(sock: socket.socket, banner: bytes | None, stop: threading.Event) -> None:
    """Serve in the background."""
    threading.Thread(target=_serve, args=(sock, banner, stop), daemon=True).start()


def test_ssh_banner_declares_booted_before_any_console_prompt(
    tmp_path: Path, server: tuple[socket.socket, threading.Event]
) -> None:
    sock, stop = server
    console = tmp_path / "console.log"
    console.write_text("[    1.0] Linux version 6.1\n[  OK  ] Started ssh.service\n")  # no prompt yet
    _start(sock, b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", stop)
    t0 = time.monotonic()
    p = probes.wait_for_boot(console, t0, 10.0, lambda: True, sock.getsockname()[1])
    assert p.ok and p.name == "boot" and "sshd answered 'SSH-2.0-OpenSSH_9.2p1 Debian-2'" in p.detail, p
    assert p.seconds is not None and p.seconds < 3.0


def test_a_connect_without_a_banner_is_no_proof_the_console_prompt_is(
    tmp_path: Path, server: tuple[socket.socket, threading.Event]
) -> None:
    sock, stop = server
    console = tmp_path / "console.log"
    console.write_text("booting\n")
    _start(sock, None, stop)  # accepts and closes: what a forward does before sshd listens

    def prompt_later() -> None:
        time.sleep(1.0)
        with console.open("a") as f:
            f.write("\nDebian GNU/Linux 12 vm ttyS0\n\nvm login: ")

    threading.Thread(target=prompt_later, daemon=True).start()
    t0 = time.monotonic()
    p = probes.wait_for_boot(console, t0, 10.0, lambda: True, sock.getsockname()[1])
    assert p.ok and "booted: console 'vm login:'" in p.detail, p
    assert p.seconds is not None and p.seconds >= 1.0


def test_neither_proof_times_out_saying_what_was_awaited(
    tmp_path: Path, server: tuple[socket.socket, threading.Event]
) -> None:
    sock, stop = server
    _start(sock, b"HTTP/1.0 400 nope\r\n", stop)  # something answers, but not sshd
    p = probes.wait_for_boot(tmp_path / "none.log", time.monotonic(), 1.0, lambda: True, sock.getsockname()[1])
    assert not p.ok and "SSH banner" in p.detail and "serial console stayed empty" in p.detail, p
