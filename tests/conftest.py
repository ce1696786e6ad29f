"""Shared fixtures: a real S3-compatible server on 127.0.0.1, the real face photos, tiny datasets and bundles.

Area-specific fixtures live in the area's own test module or a conftest beside it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# torch's spinning OpenMP threads make CPU work several times slower on a busy 2-core machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
FACES = Path(os.environ.get("VISIONOPS_FACES_DIR", ROOT.parent / "shared" / "data" / "faces-glasses"))
STREAM = Path(os.environ.get("VISIONOPS_STREAM_DIR", ROOT.parent / "shared" / "data" / "faces-stream"))
REQUIRE_SYSTEM_DEPS = os.environ.get("VISIONOPS_REQUIRE_SYSTEM_DEPS") == "1"


#: The longest test files (measured: `make test PYTEST_ARGS=--durations=30`), run first: `make test` hands whole
#: files to two xdist workers in collection order (`--no-loadscope-reorder`: xdist would otherwise sort files by
#: their number of tests), and the longest ones last would leave one worker idle.
LONGEST_FIRST = (
    "test_gate_realdata.py",
    "test_loop.py",
    "test_pipeline_local.py",
    "test_guarantees.py",
    "test_hostile_control.py",
    "test_observability.py",
)


def pytest_collection_modifyitems(items) -> None:
    """The files of :data:`LONGEST_FIRST` first (a stable sort: order within a file and among the rest kept)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def require_binary(name: str) -> str:
    """The path of a system binary; skip (or, in CI, fail) where it is not installed."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (make system-deps installs it)"
    if REQUIRE_SYSTEM_DEPS:
        pytest.fail(message + " -- CI requires it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """The real face photos (2,000 JPEGs in glasses/ and no_glasses/)."""
    if not (FACES / "glasses").is_dir():
        pytest.skip(f"real face photos not found at {FACES} (set VISIONOPS_FACES_DIR)")
    return FACES


@pytest.fixture(scope="session")
def faces_stream() -> Path:
    """7,995 more real photos at their natural glasses share (manifest.csv: file, label, mtfl_subset ...;
    lfw_5590 7.6% glasses, net_7876 3.6%): production traffic for prevalence tests."""
    if not (STREAM / "manifest.csv").is_file():
        pytest.skip(f"real photo stream not found at {STREAM} (set VISIONOPS_STREAM_DIR)")
    return STREAM


class MotoS3:
    """A moto S3 server process on 127.0.0.1 and the env that points the minio client at it."""

    def __init__(self, port: int, proc: subprocess.Popen) -> None:
        self.port, self.proc = port, proc
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {
            "S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }

    def client(self):
        from minio import Minio

        return Minio(
            f"127.0.0.1:{self.port}",
            access_key="testing",
            secret_key="testing",
            secure=False,
            region="us-east-1",
        )

    def make_bucket(self, name: str) -> str:
        client = self.client()
        if not client.bucket_exists(name):
            client.make_bucket(name)
        return f"s3://{name}"


def start_moto(extra_env: dict[str, str] | None = None) -> MotoS3:
    port = free_port()
    env = {**os.environ, **(extra_env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    wait_for_port(port, proc=proc)
    return MotoS3(port, proc)


@pytest.fixture(scope="session")
def moto_server():
    server = start_moto()
    yield server
    server.proc.terminate()
    server.proc.wait(timeout=10)


@pytest.fixture
def s3(moto_server, monkeypatch):
    """The moto server with the S3_* / AWS_* env set for this test; a fresh bucket per test."""
    import uuid

    for key, value in moto_server.env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    moto_server.bucket = moto_server.make_bucket(f"test-{uuid.uuid4().hex[:10]}")
    return moto_server
