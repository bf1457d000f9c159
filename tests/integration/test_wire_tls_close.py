"""wire's own TLS handshake closes its socket when it fails (as httpcore's does): the
descriptor moves to the TLS socket, and closing the plain one left the connection open for
as long as the error was held."""

from __future__ import annotations

import os
import socket
import ssl
import threading

import httpcore
import pytest

from dsm.transfer import wire


def test_a_handshake_that_times_out_closes_its_connection() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True)
    accepting.start()
    try:
        backend = httpcore.SyncBackend()
        stream = wire.WatchedStream(backend.connect_tcp("127.0.0.1", listener.getsockname()[1]))
        fd = stream.get_extra_info("socket").fileno()
        with (
            wire.awaiting(wire.Awaited(30, "https://localhost/")),
            pytest.raises(httpcore.ConnectTimeout) as caught,
        ):
            stream.start_tls(ssl.create_default_context(), "localhost", timeout=0.3)
        assert caught.value is not None  # the error is still held here
        assert not os.path.exists(f"/proc/self/fd/{fd}")
    finally:
        accepting.join()
        listener.close()
        for conn in held:
            conn.close()
