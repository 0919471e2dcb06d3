"""Reading checkpoints without the training package: the format check and model-only loading.

Training (:mod:`twinv2.train.checkpoint`) writes checkpoints and adds the training state; serving
(:mod:`twinv2.serve`) only needs the model. Both read through :func:`read_checkpoint`, and
:func:`load_model` rebuilds the exact :class:`~twinv2.models.CTRModel` from the file alone, importing
``twinv2.models`` and ``twinv2.data`` but never ``twinv2.train``.

Example:
    >>> from twinv2.checkpoints import load_model
    >>> model, info = load_model("runs/demo/models/twinv2/best.pt")  # doctest: +SKIP
    >>> info.sequence_config.long_len, info.version  # doctest: +SKIP
    (1000, 'c3f1a9e2b7d4')
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinv2._io import load_torch_dict
from twinv2.data.batches import SequenceConfig
from twinv2.data.schema import Manifest
from twinv2.errors import CheckpointError, Twinv2Error
from twinv2.models import CTRModel, ModelConfig, build_model

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "ModelInfo", "file_version", "load_model",
           "read_checkpoint", "upgrade_model_section"]

CHECKPOINT_FORMAT = "twinv2-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "model_state", "train_config", "sequence_config", "split",
                 "manifest", "dataset_identity", "items", "dataset_path", "train_state")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load the raw checkpoint dict (on the CPU, ``weights_only=True``) and check its format.

    Raises:
        CheckpointError: missing or unreadable file, another format, another format version, or a missing key.
    """
    path = Path(path)
    payload = load_torch_dict(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a twinv2 checkpoint (no format={CHECKPOINT_FORMAT!r} key)")
    if payload["format_version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format_version {payload['format_version']}, this version "
                              f"of twinv2 reads {CHECKPOINT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks the key '{missing[0]}'")
    return payload


def file_version(path: str | os.PathLike, length: int = 12) -> str:
    """A short content hash of a file (the first ``length`` hex digits of its SHA-256): a model version."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


@dataclass(frozen=True)
class ModelInfo:
    """What serving needs from a checkpoint besides the weights.

    Attributes:
        path: the checkpoint file; version: its content hash (:func:`file_version`).
        model_config: the architecture; sequence_config: how the training batches cut sequences (L, S, and
            whether the long sequence is raw or compressed).
        manifest: the dataset schema the model was trained on.
        items: item feature columns by name, indexed by item id (row 0 = padding), as numpy arrays.
        dataset_path, compressed_path: where the training data lay (informational; may be absent here).
        snapshot_ts: the training split's snapshot time.
    """

    path: Path
    version: str
    model_config: ModelConfig
    sequence_config: SequenceConfig
    manifest: Manifest
    items: dict[str, Any]
    dataset_path: str
    compressed_path: str | None
    snapshot_ts: int


def upgrade_model_section(model: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's model section in today's terms: files written before ``relevance`` existed were
    trained with the paper's score, which is no longer the default, so they say so explicitly."""
    return model if "relevance" in model else {**model, "relevance": "paper"}


def _model_config(path: Path, payload: dict[str, Any]) -> ModelConfig:
    model_dict = payload.get("model_config")
    if model_dict is None:  # older files: the model section of the whole training config
        model_dict = dict(payload["train_config"]).get("model")
    if not isinstance(model_dict, dict):
        raise CheckpointError(f"{path}: checkpoint has no model configuration")
    return ModelConfig.from_dict(upgrade_model_section(dict(model_dict)), source=f"{path} (model_config)")


def model_from_payload(path: Path, payload: dict[str, Any], config: ModelConfig, manifest: Manifest,
                       device: str | torch.device) -> tuple[CTRModel, dict[str, np.ndarray]]:
    """The model a checkpoint's payload describes, with its weights, in eval mode on ``device``, and its
    item-feature arrays. Raises CheckpointError when the weights do not fit the config."""
    items = {name: t.numpy() for name, t in payload["items"].items()}
    model = build_model(config, manifest, items)
    try:
        model.load_state_dict(payload["model_state"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                              f"({str(exc).splitlines()[0]})") from exc
    return model.to(device).eval(), items


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CTRModel, ModelInfo]:
    """Rebuild the trained model from a checkpoint alone, in eval mode, on ``device``.

    Args:
        path: a checkpoint written by ``twinv2 train``.
        device: where to put the model.
    Returns:
        ``(model, info)``.
    Raises:
        CheckpointError: unreadable file, damaged metadata, or weights that do not fit the described model.
    """
    path = Path(path)
    payload = read_checkpoint(path)
    try:
        config = _model_config(path, payload)
        manifest = Manifest.from_dict(payload["manifest"], file=f"{path} (manifest)")
        sequence_config = SequenceConfig(**payload["sequence_config"])
        snapshot_ts = int(dict(payload["split"])["snapshot_ts"])
    except (Twinv2Error, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({exc})") from exc
    model, items = model_from_payload(path, payload, config, manifest, device)
    info = ModelInfo(path=path, version=file_version(path), model_config=config, sequence_config=sequence_config,
                     manifest=manifest, items=items, dataset_path=str(payload["dataset_path"]),
                     compressed_path=payload.get("compressed_path"), snapshot_ts=snapshot_ts)
    return model, info
