"""Training configuration: typed dataclasses, strict YAML loading and command-line overrides.

A config file has the sections of :class:`TrainConfig` (``model``, ``data``, ``split``, ``optim``,
``train``); every section and key is optional and falls back to the dataclass default. Loading is strict:
an unknown section or key, or a value of the wrong type, is a :class:`~twinv2.errors.ConfigError` that
names the file and the dotted key. Every value can be overridden from the command line with
``--set section.key=value`` (the value is parsed as YAML, so ``50``, ``true``, ``[200, 80]`` and ``adam``
all work) and is checked the same way.

Example:
    >>> cfg = load_config(None, overrides=["model.esu_size=50", "train.epochs=1"])
    >>> cfg.model.esu_size, cfg.train.epochs
    (50, 1)
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from twinv2.errors import ConfigError
from twinv2.models.config import LONG_TERM_NAMES, ModelConfig

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DataConfig",
    "LoopConfig",
    "OptimConfig",
    "SplitConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
]

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
OPTIMIZERS = ("adam", "adagrad", "sgd")
AMP_MODES = ("none", "bf16", "fp16")  # not "off": YAML reads off as false
SPARSE_OPTIMIZERS = ("adagrad", "sgd")  # torch optimisers that take sparse gradients


@dataclass(frozen=True)
class SplitConfig:
    """Temporal split as event-count fractions (:meth:`TemporalSplit.from_fractions`).

    ``snapshot`` is the compression snapshot and the start of the training window; ``valid`` and
    ``test`` start the validation and test windows.
    """

    snapshot: float = 0.8
    valid: float = 0.9
    test: float = 0.95


@dataclass(frozen=True)
class DataConfig:
    """How samples and sequences are cut.

    ``long_len`` is the GSU input length L, equal for every model (DESIGN §3); the short sequence length
    comes from ``model.short_len``. ``max_*_samples`` draw a seeded uniform subsample of a window
    (``None`` = all events of the window).
    """

    long_len: int = 1000
    # TWIN-V2's long sequence: at most raw_cap raw behaviors since the compression snapshot, then virtual
    # items (None = raw first until L is full). See SequenceConfig.raw_cap.
    raw_cap: int | None = None
    max_train_samples: int | None = None
    max_valid_samples: int | None = 50_000
    max_test_samples: int | None = None


@dataclass(frozen=True)
class OptimConfig:
    """Optimisers: embedding tables and dense parameters are optimised separately.

    The TWIN papers train sparse embeddings with Adagrad-style updates and dense layers with Adam; that is
    the default. ``grad_clip`` caps the global gradient norm of the dense parameters (``None`` = off).

    ``sparse_embeddings`` gives the tables read only by row lookups (item ids, item side features, DARE's
    attention tables) sparse gradients (``nn.Embedding(sparse=True)``): a step then costs and allocates in
    proportion to the rows the batch touches, not to the vocabulary, which is what lets a 10^7-item table
    train in a few GB (docs/training.md, "Memory"). It needs ``embedding: adagrad`` or ``sgd`` (Adam has no
    sparse update) and ``weight_decay: 0`` (a decay would touch every row).

    ``embedding_lr`` = 0.5 was chosen on the validation GAUC of ``twin`` (the baseline, not ``twinv2``) on
    the default synthetic data, 60,000 train samples, one epoch, L = 500: Adagrad learning rates 0.05 /
    0.2 / 0.5 / 1.0 / 2.0 gave 0.584 / 0.623 / 0.650 / 0.631 / 0.573. Most ids are seen a few times per
    epoch, so small Adagrad steps leave the item embeddings (and hence the attention keys) near their
    random initialisation.
    """

    embedding: str = "adagrad"
    embedding_lr: float = 0.5
    # Adagrad's starting accumulator: with 0, the first step moves every touched coordinate by the full lr
    # whatever the gradient's size, so a rarely seen id jumps by about lr in every dimension (noise).
    embedding_initial_accumulator: float = 0.0
    dense: str = "adam"
    dense_lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 10.0
    sparse_embeddings: bool = False


@dataclass(frozen=True)
class LoopConfig:
    """The training loop: epochs, batch sizes, early stopping, seed and device.

    ``eval_every`` is a number of training steps between validations (0 = once at the end of each
    epoch); early stopping counts validations without a GAUC improvement against ``patience``.
    ``num_threads`` = 0 uses every core but one (see ``twinv2.train._runtime.default_num_threads``).
    ``max_steps`` caps the optimisation steps of the whole run (a compute budget; ``None`` = all epochs);
    a run stopped by it can be resumed with a larger cap.

    ``loader_workers``: worker processes that build training batches off the training thread (0 = build
    them on it; ``None`` = auto, see ``twinv2.train.pipeline.auto_loader_workers``). The batches are the same
    either way. ``amp``: automatic mixed precision of the forward pass, ``none``, ``bf16`` (CPU or CUDA) or
    ``fp16`` (CUDA only, with a gradient scaler). ``dist_timeout``: seconds a collective of a multi-process
    run (``torchrun``) may wait for the other ranks before the run fails with an error naming the rank.
    """

    epochs: int = 2
    batch_size: int = 256
    eval_batch_size: int = 1024
    patience: int = 2
    eval_every: int = 0
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0
    max_steps: int | None = None
    loader_workers: int | None = None
    amp: str = "none"
    dist_timeout: float = 600.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data paths."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str = "config") -> None:
        """Check value ranges and names that types alone cannot; raises :class:`ConfigError`."""
        def bad(key: str, expected: str, found: Any) -> ConfigError:
            return ConfigError(f"{source}: key '{key}': expected {expected}, found {found!r}")

        if self.model.long_term not in LONG_TERM_NAMES:
            raise bad("model.long_term", f"one of {list(LONG_TERM_NAMES)}", self.model.long_term)
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self.train, key) < 1:
                raise bad(f"train.{key}", "an integer >= 1", getattr(self.train, key))
        for key in ("patience", "eval_every", "num_threads"):
            if getattr(self.train, key) < 0:
                raise bad(f"train.{key}", "an integer >= 0", getattr(self.train, key))
        if self.train.max_steps is not None and self.train.max_steps < 1:
            raise bad("train.max_steps", "null or an integer >= 1", self.train.max_steps)
        if self.train.device not in ("auto", "cpu", "cuda") and not self.train.device.startswith("cuda:"):
            raise bad("train.device", "'auto', 'cpu', 'cuda' or 'cuda:N'", self.train.device)
        if self.data.long_len < 1:
            raise bad("data.long_len", "an integer >= 1", self.data.long_len)
        if self.data.raw_cap is not None and self.data.raw_cap < 0:
            raise bad("data.raw_cap", "null or an integer >= 0", self.data.raw_cap)
        for key in ("max_train_samples", "max_valid_samples", "max_test_samples"):
            value = getattr(self.data, key)
            if value is not None and value < 1:
                raise bad(f"data.{key}", "null or an integer >= 1", value)
        for key in ("embedding", "dense"):
            if getattr(self.optim, key) not in OPTIMIZERS:
                raise bad(f"optim.{key}", f"one of {OPTIMIZERS}", getattr(self.optim, key))
        for key in ("embedding_lr", "dense_lr"):
            if not getattr(self.optim, key) > 0:
                raise bad(f"optim.{key}", "a positive learning rate", getattr(self.optim, key))
        if not self.optim.embedding_initial_accumulator >= 0:
            raise bad("optim.embedding_initial_accumulator", "a value >= 0",
                      self.optim.embedding_initial_accumulator)
        if self.optim.weight_decay < 0:
            raise bad("optim.weight_decay", "a value >= 0", self.optim.weight_decay)
        if self.optim.grad_clip is not None and not self.optim.grad_clip > 0:
            raise bad("optim.grad_clip", "null or a positive norm", self.optim.grad_clip)
        if self.optim.sparse_embeddings:
            if self.optim.embedding not in SPARSE_OPTIMIZERS:
                raise bad("optim.embedding", f"one of {SPARSE_OPTIMIZERS} with optim.sparse_embeddings "
                          "(they take sparse gradients)", self.optim.embedding)
            if self.optim.weight_decay != 0:
                raise bad("optim.weight_decay", "0 with optim.sparse_embeddings (a decay updates every row)",
                          self.optim.weight_decay)
        if self.train.loader_workers is not None and self.train.loader_workers < 0:
            raise bad("train.loader_workers", "null (auto) or an integer >= 0", self.train.loader_workers)
        if self.train.amp not in AMP_MODES:
            raise bad("train.amp", f"one of {AMP_MODES}", self.train.amp)
        if not self.train.dist_timeout > 0:
            raise bad("train.dist_timeout", "a positive number of seconds", self.train.dist_timeout)
        s = self.split
        if not 0.0 < s.snapshot < s.valid < s.test < 1.0:
            raise bad("split", "0 < snapshot < valid < test < 1", (s.snapshot, s.valid, s.test))


# -- generic strict conversion ----------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _index(where: str, i: int) -> str:
    """``"f: key 'a.b'"`` -> ``"f: key 'a.b[i]'"``."""
    return where[:-1] + f"[{i}]'" if where.endswith("'") else f"{where}[{i}]"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` (parsed YAML) against the type hint ``tp``; return it converted (lists -> tuples,
    ints -> floats). No silent conversions beyond those two: a string is never turned into a number."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, found {type(value).__name__} {value!r}")
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list ({_type_name(tp)}), found {type(value).__name__} "
                              f"{value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], _index(where, i)) for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, found {len(value)}")
            items = [_coerce(v, a, _index(where, i)) for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            elem = args[0] if args else Any
            items = [_coerce(v, elem, _index(where, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is type(None):
        if value is None:
            return None
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, found {type(value).__name__} {value!r}")


def _key_where(source: str, key: str) -> str:
    return f"{source}: key '{key}'"


def config_from_dict(data: dict[str, Any], source: str = "config",
                     base: TrainConfig | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from a nested mapping, starting from ``base`` (default: defaults).

    Raises:
        ConfigError: ``"<source>: unknown key 'model.esu_sise' ..."`` or
            ``"<source>: key 'train.epochs': expected int, found str 'three'"``.
    """
    base = base or TrainConfig()
    if data is None:
        return base
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, found {type(data).__name__}")
    sections = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    changes = {}
    for name, value in data.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown key '{name}' (known sections: {', '.join(sections)})")
        changes[name] = _section(hints[name], value, getattr(base, name), source, name)
    # Build without validation first so range errors can name the source.
    cfg = object.__new__(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        object.__setattr__(cfg, f.name, changes.get(f.name, getattr(base, f.name)))
    cfg.validate(source)
    return cfg


def _section(cls: type, data: Any, base: Any, source: str, section: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{_key_where(source, section)}: expected a mapping, found "
                          f"{type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    changes = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{section}.{key}' (known keys of '{section}': "
                              f"{', '.join(names)})")
        changes[key] = _coerce(value, hints[key], _key_where(source, f"{section}.{key}"))
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError as exc:
        raise ConfigError(f"{source}: section '{section}': {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: section '{section}': {exc}") from exc


def config_to_dict(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """The config as plain nested dicts (tuples become lists), suitable for YAML, JSON and checkpoints."""
    def plain(v: Any) -> Any:
        return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

    return {f.name: {k: plain(v) for k, v in dataclasses.asdict(getattr(config, f.name)).items()}
            for f in dataclasses.fields(TrainConfig)}


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"section.key=value"`` and parse the value as YAML (``50`` -> int, ``null`` -> None)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key.count(".") != 1 or not all(key.split(".")):
        raise ConfigError(f"--set {text!r}: expected a key of the form section.key, e.g. model.esu_size")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from exc
    return key, value


def apply_overrides(config: TrainConfig, overrides: list[str] | dict[str, Any],
                    source: str = "--set") -> TrainConfig:
    """Apply ``section.key=value`` strings (or a ``{"section.key": value}`` mapping) on top of ``config``.

    All overrides are applied together and then checked like a config file (so ``split.snapshot`` and
    ``split.valid`` can move past each other); errors name ``source`` and the key.
    """
    pairs = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
    nested: dict[str, dict[str, Any]] = {}
    for key, value in pairs:
        if key.count(".") != 1 or not all(key.split(".")):
            raise ConfigError(f"{source} {key!r}: expected a key of the form section.key, e.g. model.esu_size")
        section, name = key.split(".", 1)
        nested.setdefault(section, {})[name] = value
    return config_from_dict(nested, source=source, base=config)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | dict[str, Any] | None = None,
                base: TrainConfig | None = None) -> TrainConfig:
    """Load a YAML config file strictly (``None`` = dataclass defaults), then apply ``overrides``.

    Raises:
        ConfigError: naming the file and the dotted key for an unknown key, a wrong type or a bad value.
    """
    config = base or TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: expected UTF-8 text, found the byte 0x{exc.object[exc.start]:02x} at offset "
                              f"{exc.start}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        config = config_from_dict(data or {}, source=str(path), base=config)
    if overrides:
        config = apply_overrides(config, overrides)
    return config
