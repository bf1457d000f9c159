"""A small HTTP proxy on 127.0.0.1 for tests: `CONNECT host:port` tunnels (https through
the proxy) and absolute-form requests (`GET http://host/path`, forwarded with
`Connection: close`). It records each request line, to show the proxy was used."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
from urllib.parse import urlsplit


class ProxyServer:
    def __init__(self) -> None:
        self.seen: list[str] = []  # request lines, as the client sent them
        seen = self.seen

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline().decode("latin-1").strip()
                headers = []
                while (header := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                    headers.append(header)
                seen.append(line)
                method, target, _ = line.split(" ", 2)
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    upstream = socket.create_connection((host, int(port)))
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:
                    url = urlsplit(target)
                    upstream = socket.create_connection((url.hostname, url.port or 80))
                    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
                    kept = [h for h in headers if not h.lower().startswith(b"connection")]
                    upstream.sendall(
                        f"{method} {path} HTTP/1.1\r\n".encode()
                        + b"".join(kept)
                        + b"Connection: close\r\n\r\n"
                    )
                # Nothing is buffered past the headers: a client sends its TLS hello only
                # after the 200, and these GETs have no body.
                with upstream:
                    _pump_both(self.connection, upstream)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ProxyServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pump_both(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""

    def copy(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    back = threading.Thread(target=copy, args=(upstream, client), daemon=True)
    back.start()
    copy(client, upstream)
    back.join()
