"""The HTTP API (FastAPI; OpenAPI at ``/docs``): thin handlers over :class:`~twinv2.serve.service.Service`.

Routes: ``POST /v1/score``, ``POST /v1/events``, ``GET /healthz``, ``GET /metrics``,
``POST /v1/admin/reload`` (bearer token). Every 4xx answers ``{"error": "<field>: <message>", "field":
"<field>"}``: malformed JSON is a 400 on ``body``; wrong types, missing or unknown fields are 422s naming
the field (``candidates[3]``, ``events[0].ts``); too many candidates is a 413; a missing or wrong token is a
401 on ``Authorization``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from twinv2 import __version__
from twinv2.errors import RequestError, Twinv2Error
from twinv2.serve.metrics import Metrics
from twinv2.serve.service import ServeConfig, Service
from twinv2.serve.store import Event

__all__ = ["CONFIG_ENV", "app_from_env", "create_app"]

CONFIG_ENV = "TWINV2_SERVE_CONFIG"  # JSON ServeConfig handed to worker processes


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ScoreRequest(_Strict):
    """One user and the items to score."""

    user_id: int = Field(ge=0, description="Dense user id of the dataset (an unknown id is a cold start).")
    candidates: list[int] = Field(description="Item ids to score (limit: --max-candidates, default 2000).")
    request_ts: int | None = Field(None, description="Seconds; default: now (never before the newest stored "
                                                     "behavior). Only behaviors strictly before it are used.")
    explain: bool = Field(False, description="Also return, per candidate, the long-term entries with the "
                                             "largest ESU weight.")
    explain_top: int | None = Field(None, ge=1, le=50, description="Entries per explanation (default 3).")


class EventIn(_Strict):
    """One live behavior."""

    event_id: str = Field(min_length=1, max_length=200, description="Idempotency key, unique per user.")
    user_id: int = Field(ge=0)
    item_id: int
    ts: int = Field(description="Seconds; must not precede the user's snapshot.")
    label: int = Field(ge=0, le=1)
    features: dict[str, float] = Field(description="The model's cross features by name (e.g. play_time, "
                                                   "completion_ratio).")


class EventsRequest(_Strict):
    events: list[EventIn] = Field(min_length=1, max_length=10_000)


class ReloadRequest(_Strict):
    checkpoint: str | None = Field(None, description="Path of a new checkpoint (readable by the server).")
    compressed: str | None = Field(None, description="Path of a new compression folder to load and activate.")


def _field(loc: tuple[Any, ...]) -> str:
    """``("body", "events", 0, "ts")`` -> ``events[0].ts``."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def _error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": f"{field}: {message}", "field": field})


def create_app(service: Service) -> FastAPI:
    """The FastAPI app serving ``service`` (which it closes on shutdown)."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start_polling()
        try:
            yield
        finally:
            service.close()

    app = FastAPI(title="twinv2 serving", version=__version__, lifespan=lifespan,
                  description="TWIN-V2 / TWIN CTR scoring over life-cycle user histories, with live events.")
    metrics = Metrics()
    app.state.service, app.state.metrics = service, metrics

    @app.middleware("http")
    async def _observe(request: Request, call_next):  # Starlette's middleware signature
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            metrics.observe(getattr(route, "path", "unmatched"), status, time.perf_counter() - start)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return _error(400, "body", f"malformed JSON ({first.get('ctx', {}).get('error', first['msg'])})")
        field = _field(tuple(first.get("loc", ("body",))))
        message = first.get("msg", "invalid value")
        if first.get("type") == "extra_forbidden":
            message = "unknown field"
        elif "input" in first and first.get("type") != "missing":
            message += f", found {json.dumps(first['input'])[:80]}"
        return _error(422, field, message)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, exc.field, str(exc)[len(exc.field) + 2:])

    @app.exception_handler(Twinv2Error)
    async def _library_error(request: Request, exc: Twinv2Error) -> JSONResponse:
        return JSONResponse(status_code=500, content={"error": str(exc), "field": None})

    @app.post("/v1/score")
    def score(req: ScoreRequest) -> dict[str, Any]:
        """Score ``candidates`` for ``user_id``: one probability per candidate, in order, and the model version."""
        return service.score(req.user_id, req.candidates, req.request_ts, req.explain, req.explain_top)

    @app.post("/v1/events")
    def events(req: EventsRequest) -> dict[str, Any]:
        """Append live behaviors. A 200 means they are durable; a repeated ``event_id`` is a no-op."""
        result = service.append_events([Event(e.user_id, e.event_id, e.item_id, e.ts, e.label, dict(e.features))
                                        for e in req.events])
        return {"accepted": result.accepted, "duplicates": result.duplicates,
                "folded_users": result.folded_users, "folded_events": result.folded_events}

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness and what is being served."""
        return service.health()

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        """Prometheus text: requests by route and status, latency histograms, cache and store size."""
        size = service.store.size()
        cache = service.cache_stats()
        return metrics.render({
            "twinv2_cache_items": ("Items in the projection cache.", cache["items"]),
            "twinv2_cache_bytes": ("Bytes of the projection cache.", cache["bytes"]),
            "twinv2_store_users": ("Users with clusters in the active version.", size.users),
            "twinv2_store_clusters": ("Virtual items in the active version.", size.clusters),
            "twinv2_store_events": ("Raw behaviors stored.", size.events),
            "twinv2_store_bytes": ("Bytes used by the store.", size.bytes),
        })

    @app.post("/v1/admin/reload")
    def reload(req: ReloadRequest,
               authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        """Load a new checkpoint and/or compression version (bearer token); other processes follow."""
        token = service.config.admin_token
        if not token:
            raise RequestError("Authorization", "admin endpoints are disabled: start the server with "
                               "--admin-token (or TWINV2_ADMIN_TOKEN)", status=403)
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not authorization or not hmac.compare_digest(given.encode(), token.encode()):
            raise RequestError("Authorization", "missing or wrong bearer token", status=401)
        if req.checkpoint is None and req.compressed is None:
            raise RequestError("checkpoint", "give a checkpoint and/or a compressed folder to load")
        return service.reload(req.checkpoint, req.compressed)

    return app


def app_from_env() -> FastAPI:
    """App factory for worker processes: the configuration comes from ``$TWINV2_SERVE_CONFIG`` (JSON)."""
    config = ServeConfig(**json.loads(os.environ[CONFIG_ENV]))
    return create_app(Service(config, prepare=False))
