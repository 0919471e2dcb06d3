"""The HTTP API: scoring, explanations, live events, admin reload, metrics, and 4xx messages naming the field."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.serve.serve_testing import SNAPSHOT_TS, save_model
from twinv2.data.store import load_dataset
from twinv2.serve.app import create_app
from twinv2.serve.service import ServeConfig, Service

TOKEN = "s3cret"
HEAVY_USER = 3


def _event(i: int, user: int = HEAVY_USER, ts: int = 10_500, **over):
    e = {"event_id": f"e{i}", "user_id": user, "item_id": 1 + i % 60, "ts": ts + i if isinstance(ts, int) else ts,
         "label": i % 2, "features": {"play_time": 12.5, "completion_ratio": 0.4}}
    e.update(over)
    return e


@pytest.fixture
def client(serve_data, store_url):
    config = ServeConfig(checkpoint=str(serve_data["twinv2"]), store=store_url,
                         compressed=str(serve_data["compressed"]), admin_token=TOKEN, fold_cap=6, poll_seconds=0)
    service = Service(config)
    with TestClient(create_app(service)) as c:
        yield c


def test_score_returns_one_probability_per_candidate_and_the_model_version(client):
    r = client.post("/v1/score", json={"user_id": HEAVY_USER, "candidates": [5, 1, 9], "request_ts": 10_000})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["scores"]) == 3 and all(0 < s < 1 for s in body["scores"])
    assert body["model_version"] == client.app.state.service.model_version and not body["cold_start"]
    again = client.post("/v1/score", json={"user_id": HEAVY_USER, "candidates": [9, 5], "request_ts": 10_000})
    assert again.json()["scores"] == [body["scores"][2], body["scores"][0]]  # per candidate, order-independent


def test_score_explanations_name_entries_of_the_life_cycle(client):
    # Shortly after the snapshot the long sequence holds a few raw behaviors and many virtual items.
    r = client.post("/v1/score", json={"user_id": HEAVY_USER, "candidates": [5, 7], "request_ts": SNAPSHOT_TS + 300,
                                       "explain": True, "explain_top": 4})
    assert r.status_code == 200, r.text
    explanations = r.json()["explanations"]
    assert len(explanations) == 2 and all(len(e) == 4 for e in explanations)
    for entry in explanations[0]:
        assert entry["kind"] in ("raw", "virtual") and 1 <= entry["item_id"] <= 60
        assert entry["first_ts"] <= entry["last_ts"] < SNAPSHOT_TS + 300 and 0 < entry["weight"] <= 1
        assert (entry["last_ts"] < SNAPSHOT_TS) == (entry["kind"] == "virtual")
        assert (entry["cluster_size"] == 1) if entry["kind"] == "raw" else entry["cluster_size"] >= 1
    assert any(e["kind"] == "virtual" for e in explanations[0] + explanations[1])


def test_score_unknown_user_is_a_cold_start(client):
    r = client.post("/v1/score", json={"user_id": 12_345, "candidates": [1, 2]})
    assert r.status_code == 200 and r.json()["cold_start"] is True and len(r.json()["scores"]) == 2


@pytest.mark.parametrize(("body", "status", "field"), [
    ('{"user_id": 1, "candidates": [1,', 400, "body"),
    ({"user_id": "1", "candidates": [1]}, 422, "user_id"),
    ({"user_id": 1, "candidates": [1, "x"]}, 422, "candidates[1]"),
    ({"user_id": 1}, 422, "candidates"),
    ({"user_id": 1, "candidates": [1], "colour": 3}, 422, "colour"),
    ({"user_id": -1, "candidates": [1]}, 422, "user_id"),
    ({"user_id": 1, "candidates": []}, 422, "candidates"),
    ({"user_id": 1, "candidates": list(range(1, 2002))}, 413, "candidates"),
    ({"user_id": 1, "candidates": [1, 999]}, 422, "candidates[1]"),
    ({"user_id": 1, "candidates": [1], "request_ts": SNAPSHOT_TS - 1}, 422, "request_ts"),
    ({"user_id": 1, "candidates": [1], "explain": "yes"}, 422, "explain"),
])
def test_score_bad_input_is_a_4xx_naming_the_field(client, body, status, field):
    r = client.post("/v1/score", content=body if isinstance(body, str) else json.dumps(body),
                    headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and r.json()["error"].startswith(f"{field}: ")


@pytest.mark.parametrize(("event", "field"), [
    ({"features": {"play_time": 1.0}}, "events[0].features.completion_ratio"),
    ({"features": {"play_time": 1.0, "completion_ratio": 0.2, "mood": 1.0}}, "events[0].features.mood"),
    ({"ts": SNAPSHOT_TS - 5}, "events[0].ts"),  # older than the user's snapshot
    ({"label": 2}, "events[0].label"),
    ({"item_id": 0}, "events[0].item_id"),
    ({"ts": "soon"}, "events[0].ts"),
    ({"event_id": ""}, "events[0].event_id"),
])
def test_events_bad_input_is_a_422_naming_the_field(client, event, field):
    r = client.post("/v1/events", json={"events": [_event(0, **event)]})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_events_are_idempotent_by_event_id(client):
    store = client.app.state.service.store
    user = 5_000  # below the fold cap: every stored event stays visible
    first = client.post("/v1/events", json={"events": [_event(0, user=user), _event(1, user=user)]}).json()
    retry = client.post("/v1/events", json={"events": [_event(1, user=user), _event(0, user=user)]}).json()
    assert (first["accepted"], first["duplicates"]) == (2, 0)
    assert (retry["accepted"], retry["duplicates"]) == (0, 2)
    assert store.get_user(user).events.ts.tolist() == [10_500, 10_501]
    # The same event id of another user is another event.
    other = client.post("/v1/events", json={"events": [_event(0, user=user + 1)]}).json()
    assert other["accepted"] == 1


def test_events_beyond_the_raw_cap_are_folded_into_the_clusters(client, serve_data):
    service = client.app.state.service
    user = 11 + 1_000  # a new user: no clusters yet; their events start after the version snapshot
    posted = [_event(i, user=user, ts=SNAPSHOT_TS + 100) for i in range(20)]
    results = [client.post("/v1/events", json={"events": [e]}).json() for e in posted]
    assert sum(r["accepted"] for r in results) == 20 and sum(r["folded_users"] for r in results) >= 1
    state = service.store.get_user(user)
    folded = int(state.clusters["cluster_size"].sum())
    unfolded = int((state.events.ts >= state.snapshot_ts).sum())
    assert folded + unfolded == 20 and unfolded <= 6 and state.snapshot_ts > SNAPSHOT_TS
    # The folded behaviors are now behind the user's snapshot: an event there is refused.
    late = client.post("/v1/events", json={"events": [_event(99, user=user, ts=SNAPSHOT_TS + 1)]})
    assert late.status_code == 422 and late.json()["field"] == "events[0].ts"
    assert client.post("/v1/score", json={"user_id": user, "candidates": [1, 2]}).status_code == 200


def test_admin_reload_needs_the_bearer_token_and_swaps_the_model(client, serve_data, tmp_path):
    other = save_model(load_dataset(serve_data["dataset"]), "twinv2", tmp_path / "other.pt", serve_data["compressed"],
                       seed=5)
    body = {"checkpoint": str(other)}
    assert client.post("/v1/admin/reload", json=body).status_code == 401
    wrong = client.post("/v1/admin/reload", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["field"] == "Authorization"
    old = client.post("/v1/score", json={"user_id": HEAVY_USER, "candidates": [1], "request_ts": 10_000}).json()
    ok = client.post("/v1/admin/reload", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200, ok.text
    new = client.post("/v1/score", json={"user_id": HEAVY_USER, "candidates": [1], "request_ts": 10_000}).json()
    assert new["model_version"] != old["model_version"] and new["scores"] != old["scores"]
    empty = client.post("/v1/admin/reload", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert empty.status_code == 422 and empty.json()["field"] == "checkpoint"


def test_healthz_and_metrics(client):
    client.post("/v1/score", json={"user_id": 1, "candidates": [1]})
    client.post("/v1/score", json={"user_id": 1, "candidates": [0]})
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["long_term"] == "twinv2"
    text = client.get("/metrics").text
    assert 'twinv2_requests_total{route="/v1/score",status="200"} 1' in text
    assert 'twinv2_requests_total{route="/v1/score",status="422"} 1' in text
    assert 'twinv2_request_seconds_count{route="/v1/score"} 2' in text
    assert "twinv2_cache_items 61" in text and "twinv2_store_users 20" in text


def test_oov_unknown_mode_scores_unknown_items_and_lists_them(serve_data, tmp_path):
    config = ServeConfig(checkpoint=str(serve_data["twinv2"]), store=f"sqlite://{tmp_path / 's.db'}",
                         compressed=str(serve_data["compressed"]), oov="unknown", poll_seconds=0)
    out = Service(config).score(HEAVY_USER, [1, 500, -3], request_ts=10_000)
    assert len(out["scores"]) == 3 and out["unknown_candidates"] == [-3, 500]
    assert out["scores"][1] == out["scores"][2]  # both scored as the unknown item


def test_reload_published_through_the_store_reaches_other_processes(serve_data, store_url, tmp_path):
    """Replicas (or --workers processes) share the store: a reload on one is adopted by the others."""
    config = ServeConfig(checkpoint=str(serve_data["twinv2"]), store=store_url,
                         compressed=str(serve_data["compressed"]), poll_seconds=0)
    first, second = Service(config), Service(config, prepare=False)
    other = save_model(load_dataset(serve_data["dataset"]), "twinv2", tmp_path / "other.pt", serve_data["compressed"],
                       seed=9)
    assert not second.sync()
    first.reload(checkpoint=str(other))
    assert second.sync() and second.model_version == first.model_version
    request = {"user_id": HEAVY_USER, "candidates": [1, 2, 3], "request_ts": 10_000}
    assert second.score(**request)["scores"] == first.score(**request)["scores"]


def test_folding_into_a_category_split_version_keeps_clusters_pure(serve_data, tmp_path):
    """A version built with ``split_by`` is served: live behaviors fold with the version's split (each
    joins only a cluster of its own category, or starts one: tested on the job's incremental assignment in
    tests/compress), instead of failing for want of the items' categories."""
    from twinv2.compress import ClusterConfig, compress_dataset

    split = tmp_path / "split"
    compress_dataset(serve_data["dataset"], split, SNAPSHOT_TS, workers=1, seed=0, progress=False,
                     config=ClusterConfig(split_by="category_id"))
    dataset = load_dataset(serve_data["dataset"])
    checkpoint = save_model(dataset, "twinv2", tmp_path / "m.pt", split)
    config = ServeConfig(checkpoint=str(checkpoint), store=f"sqlite://{tmp_path / 's.db'}", compressed=str(split),
                         admin_token=TOKEN, fold_cap=6, poll_seconds=0)
    service = Service(config)
    with TestClient(create_app(service)) as c:
        before = int(service.store.get_user(HEAVY_USER).clusters["cluster_size"].sum())
        for i in range(30):
            r = c.post("/v1/events", json={"events": [_event(i, user=HEAVY_USER)]})
            assert r.status_code == 200, r.text
        state = service.store.get_user(HEAVY_USER)
        comp = service._folder.compressor
    assert comp.config.split_by == "category_id"
    assert np.array_equal(comp.split_values, np.asarray(dataset.items["category_id"], np.int64))
    folded = int(state.clusters["cluster_size"].sum()) - before
    unfolded = int((state.events.ts >= state.snapshot_ts).sum())
    assert folded >= 30 - unfolded and unfolded <= 6  # the user's earlier raw behaviors fold too
