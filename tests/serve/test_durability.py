"""Acknowledged live events survive a hard kill of the server (SIGKILL), exactly once, for both stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import _free_port
from tests.serve.serve_testing import SNAPSHOT_TS
from twinv2.checkpoints import load_model
from twinv2.serve.backends import open_store
from twinv2.serve.store import context_length

USERS = (2, 7, 4_242)  # two users of the dataset and a new one


def _start(serve_data, store_url: str, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "twinv2.cli", "serve", "--checkpoint", str(serve_data["twinv2"]),
           "--compressed", str(serve_data["compressed"]), "--store", store_url, "--port", str(port),
           "--fold-cap", "1000000"]  # no folding: every stored event stays visible to the check
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server did not start:\n{log.read_text()[-3000:]}")


def _event(user: int, n: int) -> dict:
    # One timestamp per (user, n): the stored copy of an event is recognisable by (user, ts).
    return {"event_id": f"u{user}-{n}", "user_id": user, "item_id": 1 + n % 60, "ts": SNAPSHOT_TS + 10_000 + n,
            "label": n % 2, "features": {"play_time": float(n % 90), "completion_ratio": (n % 10) / 10}}


@pytest.mark.slow
def test_acknowledged_events_survive_sigkill_exactly_once(serve_data, store_url, tmp_path):
    port = _free_port()
    log = tmp_path / "server.log"
    proc = _start(serve_data, store_url, port, log)
    acked: set[str] = set()
    sent: dict[str, dict] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def sender(worker: int) -> None:
        n = worker
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as client:
            while not stop.is_set() and n < 100_000:
                batch = [_event(USERS[(n + k) % len(USERS)], n + 4 * k) for k in range(2)]
                n += 8
                with lock:
                    sent.update({e["event_id"]: e for e in batch})
                try:
                    r = client.post("/v1/events", json={"events": batch})
                except httpx.HTTPError:
                    continue  # the server is gone: not acknowledged
                if r.status_code == 200:
                    with lock:
                        acked.update(e["event_id"] for e in batch)

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: requests are in flight
    proc.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acked) >= 200, f"only {len(acked)} events acknowledged before the kill"

    proc = _start(serve_data, store_url, port, log)
    try:
        model_info = load_model(serve_data["twinv2"])[1]
        store = open_store(store_url, [c.name for c in model_info.manifest.cross_numerics],
                           context_length(model_info.sequence_config))

        def copies() -> dict[str, int]:
            counts: dict[str, int] = {}
            for user in USERS:
                ts = store.get_user(user).events.ts.tolist()
                for e in sent.values():
                    if e["user_id"] == user:
                        counts[e["event_id"]] = ts.count(e["ts"])
            return counts

        after_kill = copies()
        lost = sorted(i for i in acked if after_kill[i] != 1)
        assert not lost, f"{len(lost)} acknowledged events lost or doubled, e.g. {lost[:5]}"
        assert max(after_kill.values()) <= 1  # in-flight, unacknowledged events: at most once
        # Retrying everything is a no-op for what was stored; the rest is stored once.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
            events = list(sent.values())
            dup = 0
            for start in range(0, len(events), 200):
                r = client.post("/v1/events", json={"events": events[start:start + 200]})
                assert r.status_code == 200, r.text
                dup += r.json()["duplicates"]
        assert dup == sum(after_kill.values())
        assert set(copies().values()) == {1}
        store.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
