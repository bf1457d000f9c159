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


def _connected(listener: socket.socket) -> tuple[wire.WatchedStream, int]:
    """A watched stream connected to `listener`, and its socket's descriptor."""
    backend = httpcore.SyncBackend()
    stream = wire.WatchedStream(backend.connect_tcp("127.0.0.1", listener.getsockname()[1]))
    return stream, stream.get_extra_info("socket").fileno()


def test_a_handshake_that_times_out_closes_its_connection() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True)
    accepting.start()
    try:
        stream, fd = _connected(listener)
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


class _Refusing(ssl.SSLContext):
    """A context whose wrap_socket fails before any handshake (as a socket reset meanwhile)."""

    def wrap_socket(self, *args: object, **kwargs: object) -> ssl.SSLSocket:
        raise ConnectionResetError(104, "reset before the handshake")


def test_an_oserror_of_wrap_socket_is_a_connect_error_and_closes_its_connection() -> None:
    """As httpcore's own start_tls maps it: raw, it escaped httpx (an internal error)."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        stream, fd = _connected(listener)
        with (
            wire.awaiting(wire.Awaited(30, "https://localhost/")),
            pytest.raises(httpcore.ConnectError, match="reset before the handshake"),
        ):
            stream.start_tls(_Refusing(ssl.PROTOCOL_TLS_CLIENT), "localhost", timeout=5)
        assert not os.path.exists(f"/proc/self/fd/{fd}")
    finally:
        listener.close()
