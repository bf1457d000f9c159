"""Pure parts of the API's guards: the names a server answers to, the failure buckets."""

from __future__ import annotations

from dsm.api.auth import FAILURES_ALLOWED, FailureBuckets
from dsm.api.guard import host_names, origins


def test_loopback_names_with_the_port() -> None:
    assert host_names("127.0.0.1", 8080, []) == {
        "127.0.0.1:8080",
        "localhost:8080",
        "[::1]:8080",
    }
    assert "localhost" in host_names("::1", 80, [])  # port 80 may be left out


def test_configured_names_beyond_loopback() -> None:
    names = host_names("0.0.0.0", 8080, ["Data.Example", "proxy.example:443", "fd00::1"])
    assert names == {"data.example:8080", "proxy.example:443", "[fd00::1]:8080"}
    assert host_names("192.0.2.7", 9000, []) == {"192.0.2.7:9000"}


def test_failures_spend_a_bucket_that_refills() -> None:
    now = [0.0]
    buckets = FailureBuckets(clock=lambda: now[0])
    for _ in range(FAILURES_ALLOWED):
        assert buckets.wait_s("a") == 0
        buckets.failed("a")
    assert buckets.wait_s("a") == 1
    assert buckets.wait_s("b") == 0  # per client
    now[0] = 1.0
    assert buckets.wait_s("a") == 0  # one more try
    buckets.failed("a")
    assert buckets.wait_s("a") == 1
    now[0] = 100.0
    assert buckets.wait_s("a") == 0


def test_origins_of_our_names() -> None:
    assert origins(["localhost:8080", "proxy.example:443"]) == {
        "http://localhost:8080",
        "https://localhost:8080",
        "http://proxy.example:443",
        "https://proxy.example:443",
        "https://proxy.example",
    }
