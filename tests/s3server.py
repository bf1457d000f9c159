"""A real S3 API server on 127.0.0.1 (moto's), started by the tests, with a bucket per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

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
