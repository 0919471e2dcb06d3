"""Online serving: a trained model scores candidate items for one user at request time, from the user's
life cycle kept in a store that live events update (projection cache, scorer, store, HTTP API).

Layers, each usable alone: :mod:`~twinv2.serve.scorer` (a model and one user's sequences -> scores),
:mod:`~twinv2.serve.sequences` (a stored user -> sequences, through the training batch builder),
:mod:`~twinv2.serve.store` (SQLite or Redis), :mod:`~twinv2.serve.service` (validation, reloads) and
:mod:`~twinv2.serve.app` (FastAPI). ``serve`` imports ``twinv2.models`` but never ``twinv2.train`` or the
importers; FastAPI, uvicorn and redis are imported only by the modules that need them.

Example:
    >>> from twinv2.serve import ServeConfig, Service
    >>> service = Service(ServeConfig(checkpoint="runs/demo/models/twinv2/best.pt",  # doctest: +SKIP
    ...                               compressed="runs/demo/compressed_test", store="sqlite://serve.db"))
    >>> service.score(user_id=3, candidates=[10, 11, 12])["scores"]  # doctest: +SKIP
"""

from twinv2.serve.backends import open_store
from twinv2.serve.scorer import ProjectionCache, Scorer
from twinv2.serve.sequences import user_sequences
from twinv2.serve.service import ServeConfig, Service
from twinv2.serve.state import RawEvents, UserState
from twinv2.serve.store import Event, LifeCycleStore

__all__ = [
    "Event",
    "LifeCycleStore",
    "ProjectionCache",
    "RawEvents",
    "Scorer",
    "ServeConfig",
    "Service",
    "UserState",
    "open_store",
    "user_sequences",
]
