"""A real S3 API server on 127.0.0.1 (moto's), started by the tests, with a bucket per test,
and a front for it that lies on demand (LyingS3)."""

from __future__ import annotations

import http.client
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from moto.server import ThreadedMotoServer

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass
class S3:
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """The AWS settings a dsm process needs to reach this server."""
        return {**CREDENTIALS, "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint}

    def client(self) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def new_bucket(self) -> str:
        name = f"team-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name

    def keys(self, bucket: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def read(self, bucket: str, key: str) -> bytes:
        obj = self.client().get_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
        body: bytes = obj["Body"].read()
        return body

    def write(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield S3(f"http://{host}:{port}")
    server.stop()


@dataclass
class Lie:
    """What the lying front of the S3 server does instead, for one kind of request."""

    status: int | None = None  # answer this status with an S3 error body
    stall: bool = False  # send the headers and half the body, then nothing until stopped
    hang: bool = False  # answer nothing at all until stopped
    once: bool = False  # for the first such request only, then pass them through


class LyingS3:
    """A front on 127.0.0.1 for the S3 server that passes every request through, except
    those `lie` names (a method and a part of the path), which it answers as told."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.lies: list[tuple[str, str, Lie]] = []
        self.seen: list[tuple[str, str, int]] = []  # method, path with its query, status
        self.asked: list[tuple[str, str, str | None]] = []  # method, path, Range: on arrival
        self.release = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _front_for(self))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def lie(self, method: str, path_part: str, lie: Lie) -> None:
        self.lies.append((method, path_part, lie))

    def told(self, method: str, path: str) -> Lie | None:
        told = next((entry for entry in self.lies if entry[0] == method and entry[1] in path), None)
        if told is not None and told[2].once:
            self.lies.remove(told)
        return None if told is None else told[2]

    def stop(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


def _front_for(front: LyingS3) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _pass(self) -> None:
            sent = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(sent) if sent else None
            front.asked.append((self.command, self.path, self.headers.get("Range")))
            lie = front.told(self.command, self.path)
            if lie is not None and lie.hang:
                front.seen.append((self.command, self.path, 0))
                front.release.wait(120)
                self.close_connection = True
                return None
            if lie is not None and lie.status is not None:
                error = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>"
                return self._answer(lie.status, {"Content-Type": "application/xml"}, error)
            conn = http.client.HTTPConnection(front.upstream.netloc)
            try:
                conn.request(self.command, self.path, body, dict(self.headers.items()))
                resp = conn.getresponse()
                data = resp.read()
                length = resp.getheader("Content-Length")  # a HEAD's says what a GET sends
                skip = {"transfer-encoding", "connection", "content-length"}
                headers = {k: v for k, v in resp.getheaders() if k.lower() not in skip}
            finally:
                conn.close()
            if lie is not None and lie.stall:
                return self._stall(resp.status, headers, data)
            self._answer(resp.status, headers, data, length)

        def _answer(
            self, status: int, headers: dict[str, str], data: bytes, length: str | None = None
        ) -> None:
            front.seen.append((self.command, self.path, status))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            head = self.command == "HEAD" and length is not None
            self.send_header("Content-Length", str(length) if head else str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _stall(self, status: int, headers: dict[str, str], data: bytes) -> None:
            front.seen.append((self.command, self.path, status))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            front.release.wait(60)
            self.close_connection = True

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _pass

    return Handler
