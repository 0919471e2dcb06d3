"""Session fixtures for the serving tests: one tiny dataset, its compressed folder, twin and twinv2 checkpoints."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve.serve_testing import make_compressed, make_dataset, save_model


@pytest.fixture(scope="session")
def serve_data(tmp_path_factory) -> dict[str, Path]:
    """Paths: ``dataset``, ``compressed``, ``twin`` and ``twinv2`` checkpoints (read-only for tests)."""
    root = tmp_path_factory.mktemp("serve")
    dataset = make_dataset(root / "data")
    compressed = make_compressed(root / "data", root / "compressed")
    return {"dataset": root / "data", "compressed": compressed,
            "twinv2": save_model(dataset, "twinv2", root / "twinv2.pt", compressed),
            "twin": save_model(dataset, "twin", root / "twin.pt", None)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[str]:
    """A private redis-server on a free loopback port, durable like production should run it
    (``appendonly yes``, ``appendfsync always``). Yields its URL. Skipped only outside CI when the
    server is not installed (``.ci/run`` installs it)."""
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs the Debian package)")
        pytest.skip("redis-server is not installed")
    folder = tmp_path_factory.mktemp("redis")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                             "--protected-mode", "yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path) -> str:
    """A fresh, empty store of each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'store.db'}"
    url = request.getfixturevalue("redis_server")
    import redis

    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    return url
