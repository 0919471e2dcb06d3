"""Self-describing checkpoints: ``load_checkpoint(path)`` rebuilds the exact model with no other arguments.

A checkpoint is one ``torch.save`` dict, written atomically, loadable with ``weights_only=True`` (only
tensors, numbers, strings, lists and dicts inside). Keys:

- ``format`` = ``"twinv2-checkpoint"``, ``format_version``, ``package_version``;
- ``model_state`` (the ``state_dict``), ``model_config`` (dict of :class:`ModelConfig`),
  ``train_config`` (the whole :class:`TrainConfig` as nested dicts);
- ``sequence_config`` (dict of :class:`SequenceConfig`), ``split`` (dict of :class:`TemporalSplit`);
- ``manifest`` (the dataset manifest as a dict), ``manifest_fingerprint`` and ``dataset_identity`` (schema
  fingerprint, user, event and time counts and a hash of the per-user event counts: a checkpoint is only
  used with the dataset it was trained on), ``items`` (the item feature columns as tensors, row 0 =
  padding), ``dataset_path``, ``compressed_path``;
- ``train_state``: epoch, position in the epoch, step, best validation GAUC, early-stopping counter,
  validation history, optimiser states and the torch RNG state (what ``--resume`` needs);
- ``item_embeddings``: float32 ``[num_items + 1, id_dim]``, the learned item-id table (row 0 = padding),
  read by the compression job as an embedding source.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinv2 import __version__
from twinv2._io import atomic_file
from twinv2.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    model_from_payload,
    read_checkpoint,
    upgrade_model_section,
)
from twinv2.data.batches import SequenceConfig
from twinv2.data.schema import Manifest
from twinv2.data.split import TemporalSplit
from twinv2.data.store import Dataset, dataset_identity
from twinv2.errors import CheckpointError, Twinv2Error
from twinv2.models import CTRModel
from twinv2.train.config import TrainConfig, config_from_dict, config_to_dict

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointInfo",
    "check_dataset_matches",
    "dataset_identity",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]


_ITEM_TABLE_KEY = "features.id_embedding.weight"  # CTRModel.item_embedding_table() in the state dict


@dataclass
class CheckpointInfo:
    """Everything in a checkpoint besides the weights, parsed into typed objects."""

    path: Path
    config: TrainConfig
    sequence_config: SequenceConfig
    split: TemporalSplit
    manifest: Manifest
    dataset_identity: dict[str, Any]
    dataset_path: str
    compressed_path: str | None
    package_version: str
    train_state: dict[str, Any]


def save_checkpoint(path: str | os.PathLike, model: CTRModel, *, config: TrainConfig,
                    sequence_config: SequenceConfig, split: TemporalSplit, dataset: Dataset,
                    compressed_path: str | os.PathLike | None, train_state: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (a crash mid-write leaves the previous file intact).

    Args:
        dataset: the training dataset (its manifest, item feature columns, path and identity are stored).
        train_state: plain values and tensors only (see the module docstring).
    """
    path = Path(path)
    manifest, items, dataset_path = dataset.manifest, dataset.items, dataset.path
    model_state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # The item table, float32 [N + 1, id_dim]: on a float32 CPU model, the state's own tensor (torch.save then
    # stores it once, and a 10^7-item table is not copied on every save), else a float32 CPU copy.
    item_table = model_state.get(_ITEM_TABLE_KEY)
    if item_table is None or item_table.dtype != torch.float32 or not item_table.is_contiguous():
        item_table = model.item_embedding_table().detach().cpu().float().contiguous()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "package_version": __version__,
        "model_state": model_state,
        "model_config": config_to_dict(config)["model"],
        "train_config": config_to_dict(config),
        "sequence_config": asdict(sequence_config),
        "split": split.to_dict(),
        "manifest": manifest.to_dict(),
        "manifest_fingerprint": manifest.fingerprint(),
        "dataset_identity": dataset_identity(dataset),
        "items": {name: torch.from_numpy(np.ascontiguousarray(col)) for name, col in items.items()},
        "dataset_path": str(Path(dataset_path).resolve()),
        # One folder, or several (the offline job on a cadence: each sample reads the latest version).
        "compressed_path": (None if compressed_path is None else str(Path(compressed_path).resolve())
                            if not isinstance(compressed_path, (list, tuple))
                            else [str(Path(p).resolve()) for p in compressed_path]),
        "train_state": train_state,
        "item_embeddings": item_table,
    }
    with atomic_file(path, "wb") as fh:
        torch.save(payload, fh)
    return path


def _info(path: Path, payload: dict[str, Any]) -> CheckpointInfo:
    try:
        train_config = dict(payload["train_config"])
        train_config["model"] = upgrade_model_section(dict(train_config.get("model") or {}))
        config = config_from_dict(train_config, source=f"{path} (train_config)")
        manifest = Manifest.from_dict(payload["manifest"], file=f"{path} (manifest)")
        sequence_config = SequenceConfig(**payload["sequence_config"])
        split = TemporalSplit(**payload["split"])
    except (Twinv2Error, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({exc})") from exc
    return CheckpointInfo(
        path=path, config=config, sequence_config=sequence_config, split=split, manifest=manifest,
        dataset_identity=dict(payload["dataset_identity"]), dataset_path=payload["dataset_path"],
        compressed_path=payload.get("compressed_path"), package_version=str(payload.get("package_version")),
        train_state=payload["train_state"],
    )


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[CTRModel, CheckpointInfo]:
    """Rebuild the trained model from a checkpoint alone, in eval mode, on ``device``.

    Example:
        >>> model, info = load_checkpoint("runs/x/best.pt")  # doctest: +SKIP
        >>> info.config.model.long_term, info.split.test_start_ts  # doctest: +SKIP
    """
    path = Path(path)
    payload = read_checkpoint(path)
    info = _info(path, payload)
    model, _ = model_from_payload(path, payload, info.config.model, info.manifest, device)
    return model, info


def check_dataset_matches(info: CheckpointInfo, dataset: Dataset) -> None:
    """Raise :class:`CheckpointError` unless ``dataset`` is the one the checkpoint was trained on.

    Compares the schema fingerprint, the user/item/event counts, the time range and the per-user event
    counts, and names the first field that differs.
    """
    found = dataset_identity(dataset)
    for key, expected in info.dataset_identity.items():
        if found.get(key) != expected:
            raise CheckpointError(
                f"{info.path}: checkpoint and dataset {dataset.path} do not match: '{key}' is {found.get(key)!r} in "
                f"the dataset, {expected!r} in the checkpoint (trained on {info.dataset_path})")
