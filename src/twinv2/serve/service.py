"""The serving service: model + projection cache + store, request validation, reloads. No HTTP here.

:class:`Service` is what the HTTP app (:mod:`twinv2.serve.app`) calls, and what tests and the latency
benchmark call directly. One process holds one :class:`Service`; several processes (``--workers``) or
several machines share one store. A reload through any of them writes the served checkpoint and the active
compression version into the store, and every other process picks the change up within ``poll_seconds``
(:meth:`Service.sync`), so replicas behind a load balancer converge without talking to each other.

Out-of-vocabulary candidates (item ids outside ``1..num_items``): with ``oov="reject"`` (default) the
request is refused with a 422 naming ``candidates[i]``; with ``oov="unknown"`` they are scored as the
unknown item (id 0: zero id embedding, unknown categorical codes) and listed in ``unknown_candidates``.
An unknown user is a cold start: scored with empty long- and short-term sequences (``cold_start: true``).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinv2.checkpoints import ModelInfo, load_model
from twinv2.compress.store import EMBEDDINGS_FILE, read_compressed_manifest
from twinv2.errors import CheckpointError, ConfigError, RequestError
from twinv2.serve.backends import open_store
from twinv2.serve.loader import RAW_VERSION, bootstrap_raw, load_version
from twinv2.serve.scorer import Scorer
from twinv2.serve.sequences import describe_positions, user_sequences
from twinv2.serve.store import (
    AppendResult,
    Event,
    Folder,
    LifeCycleStore,
    VersionInfo,
    context_length,
    make_folder,
)

__all__ = ["DEFAULT_FOLD_CAP", "OOV_MODES", "ServeConfig", "Service"]

OOV_MODES = ("reject", "unknown")
DEFAULT_FOLD_CAP = 256


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``twinv2 serve`` takes (one process's view; JSON-serialisable for worker processes).

    Attributes:
        checkpoint: the model to serve. store: ``sqlite:///path.db``, a plain path, or ``redis://host:port/db``.
        compressed: a compression folder to load as the active version (twinv2 models need one, at least on
            the first start); dataset: where the first load's raw behaviors come from (default: the
            dataset the compression job, or for raw models the training, read).
        fold_cap: the raw part's cap before folding (default: the checkpoint's ``raw_cap`` or 256).
        max_candidates: per request; oov: "reject" or "unknown"; explain_top: default entries per explanation.
        admin_token: bearer token of ``/v1/admin/*`` (None: admin disabled). threads: torch threads per process.
        device: where the model and its projection cache live and scores are computed (``cpu``, ``cuda``,
            ``cuda:N``).
        poll_seconds: how often a process checks the store for a reload made elsewhere.
    """

    checkpoint: str
    store: str = "sqlite://twinv2-serve.db"
    compressed: str | None = None
    dataset: str | None = None
    fold_cap: int | None = None
    max_candidates: int = 2000
    oov: str = "reject"
    explain_top: int = 3
    admin_token: str | None = None
    threads: int = 1
    poll_seconds: float = 2.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.oov not in OOV_MODES:
            raise ConfigError(f"--oov {self.oov!r}: expected one of {OOV_MODES}")
        if self.max_candidates < 1:
            raise ConfigError(f"--max-candidates must be >= 1, got {self.max_candidates}")
        if self.fold_cap is not None and self.fold_cap < 2:
            raise ConfigError(f"--fold-cap must be >= 2, got {self.fold_cap}")
        if self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ConfigError(f"--device {self.device!r}: expected cpu, cuda or cuda:N") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {self.device}: CUDA is not available on this machine (use --device cpu)")

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


@dataclass
class _Loaded:
    """One model version with its scorer (swapped as a whole on reload)."""

    model: Any
    info: ModelInfo
    scorer: Scorer
    loaded_at: float = field(default_factory=time.time)


def _cross_names(info: ModelInfo) -> list[str]:
    return [c.name for c in info.manifest.cross_numerics]


class Service:
    """A loaded model serving one store (see the module docstring).

    Args:
        config: the server configuration.
        prepare: load ``config.compressed`` (or bootstrap raw behaviors) into the store first. Worker
            processes started by ``twinv2 serve --workers N`` pass False: the parent prepared the store.
    Raises:
        CheckpointError, ConfigError, DataValidationError, StoreError: unusable inputs.
    """

    def __init__(self, config: ServeConfig, *, prepare: bool = True):
        self.config = config
        torch.set_num_threads(config.threads)
        self._lock = threading.RLock()
        self._loaded = self._load_model(config.checkpoint, config.device)
        info = self._loaded.info
        self.store: LifeCycleStore = open_store(config.store, _cross_names(info), context_length(info.sequence_config))
        if prepare:
            self._prepare(config.compressed)
            self.store.set_meta("checkpoint", json.dumps({"path": str(Path(config.checkpoint).resolve()),
                                                          "version": info.version}))
        self._version = self.store.active_version()
        if self._version is None:
            raise ConfigError(f"--store {config.store}: holds no loaded version yet; start with --compressed "
                              "(or, for a raw-sequence model, with its dataset) to load one")
        self._check_version_fits(self._version)
        self._folder = self._make_folder(self._version)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- loading -------------------------------------------------------------------------------------
    @staticmethod
    def _load_model(path: str, device: str = "cpu") -> _Loaded:
        model, info = load_model(path, device)
        return _Loaded(model=model, info=info, scorer=Scorer(model))

    @property
    def info(self) -> ModelInfo:
        return self._loaded.info

    @property
    def model_version(self) -> str:
        """``<checkpoint hash>/<compression version>``: what produced a score."""
        return f"{self._loaded.info.version}/{self._version.version if self._version else 'none'}"

    def _prepare(self, compressed: str | None) -> None:
        info = self._loaded.info
        if compressed is not None:
            load_version(self.store, compressed, dataset=self.config.dataset)
        elif self.store.active_version() is None:
            if info.sequence_config.long_source == "compressed":
                raise ConfigError(f"{info.path}: a {info.model_config.long_term} model reads compressed life cycles; "
                                  "pass --compressed (the output of `twinv2 compress`) on the first start")
            bootstrap_raw(self.store, self.config.dataset or info.dataset_path)

    def _check_version_fits(self, version: VersionInfo) -> None:
        if self._loaded.info.sequence_config.long_source == "compressed" and version.version == RAW_VERSION:
            raise ConfigError(f"--store {self.config.store}: holds raw behaviors only, but the "
                              f"{self._loaded.info.model_config.long_term} model reads compressed life cycles; "
                              "pass --compressed")

    def _make_folder(self, version: VersionInfo) -> Folder:
        info = self._loaded.info
        seq = info.sequence_config
        cap = self.config.fold_cap or max(2, getattr(seq, "raw_cap", None) or DEFAULT_FOLD_CAP)
        context = context_length(seq)
        if version.version == RAW_VERSION or seq.long_source != "compressed":
            return make_folder(None, None, {}, _cross_names(info), max(cap, seq.long_len), context)
        source = Path(version.source)
        try:
            manifest = read_compressed_manifest(source)
            embeddings = np.load(source / EMBEDDINGS_FILE, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{source}: the active compression version's folder is needed to fold live events "
                              f"into clusters (its item embeddings), and cannot be read here: {exc}") from exc
        numerics = {c.name: np.asarray(info.items[c.name], np.float32) for c in info.manifest.item_numerics}
        categoricals = {c.name: np.asarray(info.items[c.name], np.int64) for c in info.manifest.item_categoricals}
        return make_folder(manifest, embeddings, numerics, _cross_names(info), cap, context, categoricals)

    # -- requests ------------------------------------------------------------------------------------
    def _candidates(self, candidates: list[int]) -> tuple[torch.Tensor, list[int]]:
        if not candidates:
            raise RequestError("candidates", "expected at least one item id, found an empty list")
        if len(candidates) > self.config.max_candidates:
            raise RequestError("candidates", f"{len(candidates)} items, more than the limit of "
                               f"{self.config.max_candidates} per request", status=413)
        ids = np.asarray(candidates, dtype=np.int64)
        num_items = self._loaded.scorer.num_items
        bad = np.flatnonzero((ids < 1) | (ids > num_items))
        if len(bad) and self.config.oov == "reject":
            i = int(bad[0])
            raise RequestError(f"candidates[{i}]", f"unknown item id {int(ids[i])}: expected 1..{num_items} "
                               f"({len(bad)} unknown in this request; the server runs with --oov reject)")
        unknown = sorted({int(ids[i]) for i in bad})
        ids[bad] = 0
        return torch.from_numpy(ids), unknown

    def score(self, user_id: int, candidates: list[int], request_ts: int | None = None, explain: bool = False,
              explain_top: int | None = None) -> dict[str, Any]:
        """Score ``candidates`` for ``user_id`` (see the HTTP API in ``docs/serving.md`` for the fields).

        Raises:
            RequestError: too many candidates, unknown item ids under ``oov="reject"``, or a ``request_ts``
                before the user's snapshot.
        """
        loaded = self._loaded  # one consistent model for the whole request
        if user_id < 0:
            raise RequestError("user_id", f"expected an integer >= 0, found {user_id}")
        cands, unknown = self._candidates(candidates)
        state = self.store.get_user(int(user_id))
        compressed = loaded.info.sequence_config.long_source == "compressed"
        newest = int(state.events.ts.max()) + 1 if len(state.events) else 0
        if request_ts is None:
            request_ts = max(int(time.time()), newest, state.snapshot_ts if compressed else 0)
        elif compressed and request_ts < state.snapshot_ts:
            raise RequestError("request_ts", f"{request_ts} is before user {user_id}'s snapshot "
                               f"{state.snapshot_ts}: the clusters summarise behaviors after that time")
        seqs = user_sequences(state, int(request_ts), loaded.info.manifest, loaded.info.sequence_config)
        top = explain_top or self.config.explain_top
        if explain and not loaded.scorer.cached:
            raise RequestError("explain", f"explanations need a twin, twinv2 or dare model; this server runs "
                               f"{loaded.info.model_config.long_term}")
        logits, expl = loaded.scorer.score(seqs.long, seqs.short, cands, explain=top if explain else 0)
        scores = torch.sigmoid(logits.double()).tolist()
        out: dict[str, Any] = {"user_id": int(user_id), "model_version": self.model_version, "scores": scores,
                               "request_ts": int(request_ts), "cold_start": not state.known}
        if unknown:
            out["unknown_candidates"] = unknown
        if expl is not None:
            explanations = []
            for b in range(len(cands)):
                pos = expl.positions[b].numpy()
                keep = pos >= 0
                entries = describe_positions(state, seqs.long, int(request_ts), pos[keep])
                matched = expl.matched[b].numpy()[keep]  # [m, F]
                for entry, w, hits in zip(entries, expl.weights[b].numpy()[keep].tolist(), matched, strict=True):
                    entry["weight"] = float(w)
                    # which attributes the entry shares with the candidate (the exact-match term's features)
                    entry["matched"] = [name for name, hit in zip(expl.match_names, hits, strict=True) if hit]
                explanations.append(entries)
            out["explanations"] = explanations
        return out

    def append_events(self, events: list[Event]) -> AppendResult:
        """Store live events durably (validated here: item ids and cross features)."""
        if not events:
            raise RequestError("events", "expected at least one event, found an empty list")
        names = _cross_names(self._loaded.info)
        num_items = self._loaded.scorer.num_items
        for i, e in enumerate(events):
            if not 1 <= e.item_id <= num_items:
                raise RequestError(f"events[{i}].item_id", f"unknown item id {e.item_id}: expected 1..{num_items}")
            if e.label not in (0, 1):
                raise RequestError(f"events[{i}].label", f"expected 0 or 1, found {e.label}")
            if e.user_id < 0:
                raise RequestError(f"events[{i}].user_id", f"expected an integer >= 0, found {e.user_id}")
            missing = [n for n in names if n not in e.cross]
            if missing:
                raise RequestError(f"events[{i}].features.{missing[0]}", f"required (this model's cross features: "
                                   f"{', '.join(names)})")
            extra = sorted(set(e.cross) - set(names))
            if extra:
                raise RequestError(f"events[{i}].features.{extra[0]}", f"unknown feature; expected {', '.join(names)}")
            bad = [n for n in names if not np.isfinite(e.cross[n])]
            if bad:
                raise RequestError(f"events[{i}].features.{bad[0]}",
                                   f"expected a finite number, found {e.cross[bad[0]]}")
        return self.store.append_events(events, self._folder)

    # -- reloads -------------------------------------------------------------------------------------
    def reload(self, checkpoint: str | None = None, compressed: str | None = None) -> dict[str, Any]:
        """Load a new checkpoint and/or compression version here and publish it to the other processes.

        The new model must read the same cross features as the store holds. Requests in flight finish on the
        version they started with.
        """
        with self._lock:
            loaded = self._loaded
            if checkpoint is not None:
                candidate = self._load_model(checkpoint, self.config.device)
                names, needs = _cross_names(candidate.info), context_length(candidate.info.sequence_config)
                if names != self.store.cross_names:
                    raise RequestError("checkpoint", f"{checkpoint}: the model's cross features {names} differ "
                                       f"from the store's {self.store.cross_names}")
                if needs > self.store.context:
                    raise RequestError("checkpoint", f"{checkpoint}: needs {needs} raw behaviors per user before "
                                       f"the snapshot; the store keeps {self.store.context}")
                loaded = candidate
            if compressed is not None:
                load_version(self.store, compressed, dataset=self.config.dataset)
            version = self.store.active_version()
            assert version is not None
            self._loaded = loaded
            self._version = version
            self._check_version_fits(version)
            self._folder = self._make_folder(version)
            if checkpoint is not None:
                self.store.set_meta("checkpoint", json.dumps({"path": str(Path(checkpoint).resolve()),
                                                              "version": loaded.info.version}))
            return self.health()

    def sync(self) -> bool:
        """Adopt a checkpoint or version another process published. Returns whether anything changed."""
        with self._lock:
            changed = False
            pointer = self.store.get_meta("checkpoint")
            if pointer is not None:
                meta = json.loads(pointer)
                if meta.get("version") != self._loaded.info.version:
                    try:
                        self._loaded = self._load_model(meta["path"], self.config.device)
                        changed = True
                    except (CheckpointError, ConfigError, OSError):
                        pass  # keep serving the current model; the publisher validated the file
            version = self.store.active_version()
            if version is not None and (self._version is None or version.version != self._version.version):
                self._version = version
                self._folder = self._make_folder(version)
                changed = True
            return changed

    def start_polling(self) -> None:
        """Run :meth:`sync` every ``poll_seconds`` in a daemon thread."""
        if self._poller is not None or self.config.poll_seconds <= 0:
            return

        def loop() -> None:
            while not self._stop.wait(self.config.poll_seconds):
                try:
                    self.sync()
                except Exception:  # a store hiccup must not kill the poller
                    continue

        self._poller = threading.Thread(target=loop, name="twinv2-sync", daemon=True)
        self._poller.start()

    def close(self) -> None:
        self._stop.set()
        self.store.close()

    # -- status --------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        info = self._loaded.info
        v = self._version
        return {"status": "ok", "model_version": self.model_version, "checkpoint": str(info.path),
                "long_term": info.model_config.long_term, "long_len": info.sequence_config.long_len,
                "compression_version": None if v is None else v.version,
                "snapshot_ts": None if v is None else v.snapshot_ts, "store": self.store.url,
                "fold_cap": self._folder.raw_cap}

    def cache_stats(self) -> dict[str, int]:
        cache = self._loaded.scorer.cache
        return {"items": 0 if cache is None else cache.num_items, "bytes": 0 if cache is None else cache.nbytes}
