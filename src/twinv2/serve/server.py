"""Running the HTTP service under uvicorn: one process, or several workers sharing the store.

The store is prepared (compression version loaded, raw behaviors bootstrapped) once, in the calling
process, before any worker starts; workers then open the prepared store (``Service(prepare=False)``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from twinv2.errors import ConfigError
from twinv2.serve.service import ServeConfig, Service

__all__ = ["run_server"]


def _absolute(config: ServeConfig) -> ServeConfig:
    """Paths resolved, so worker processes read the same files whatever their working folder."""
    def resolve(p: str | None) -> str | None:
        return None if p is None else str(Path(p).resolve())

    store = config.store
    if "://" not in store:
        store = f"sqlite://{Path(store).resolve()}"
    elif store.startswith("sqlite://"):
        store = f"sqlite://{Path(store[len('sqlite://'):]).resolve()}"
    return dataclasses.replace(config, checkpoint=resolve(config.checkpoint), compressed=resolve(config.compressed),
                               dataset=resolve(config.dataset), store=store)


def run_server(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
               log_level: str = "info", on_ready: Any = None) -> None:
    """Prepare the store, then serve the HTTP API until interrupted.

    Args:
        config: the service configuration; host: the bind address (loopback unless told otherwise);
        port: TCP port; workers: uvicorn worker processes (each holds a model and a projection cache).
        on_ready: called with the prepared :class:`Service` before serving (the CLI prints a summary).
    """
    try:
        import uvicorn

        from twinv2.serve.app import CONFIG_ENV, create_app
    except ImportError as exc:
        raise ConfigError(f"twinv2 serve needs the serving extra ({exc.name} is missing): "
                          "pip install 'twinv2[serve]'") from exc

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    config = _absolute(config)
    service = Service(config)
    if on_ready is not None:
        on_ready(service)
    if workers == 1:
        uvicorn.run(create_app(service), host=host, port=port, log_level=log_level)
        return
    service.close()
    os.environ[CONFIG_ENV] = config.to_json()
    uvicorn.run("twinv2.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)
