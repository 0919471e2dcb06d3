"""The one typed configuration of a CTR model (long-term module, dimensions, budgets, hashing knobs)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from twinv2.errors import ConfigError

__all__ = ["LONG_TERM_NAMES", "RELEVANCE_NAMES", "ModelConfig"]

# Names of the long-term modules, in the order the docs and benchmarks list them.
LONG_TERM_NAMES = ("twinv2", "twin", "dare", "sim_soft", "sim_hard", "eta", "sdim", "din", "avg_pool")
# The relevance scores of the learned GSU (twin, twinv2, dare): see RELEVANCE in docs/models.md.
RELEVANCE_NAMES = ("paper", "match")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a CTR model's architecture (the checkpoint stores it as a dict).

    Budgets: every two-stage model reads the GSU input length L from the batch (``SequenceConfig.long_len``)
    and keeps ``esu_size`` behaviors for its ESU.

    Example:
        >>> ModelConfig(long_term="twin", esu_size=50).num_heads
        4
    """

    long_term: str = "twinv2"  # twinv2 | twin | dare | sim_soft | sim_hard | eta | sdim | din | avg_pool
    # Item id embedding width. The papers use 64 at Kuaishou's scale; here 8, chosen on validation GAUC
    # (docs/models.md): most ids are seen a handful of times, and 64 dims of barely trained id embedding
    # outweigh the 8-dim category/author blocks in TWIN's dot-product score.
    id_dim: int = 8
    feature_dim: int = 8  # other categoricals and bucketised numerics
    num_heads: int = 4
    head_dim: int = 16  # d_k = d_v per head; the ESU output is num_heads * head_dim wide
    esu_size: int = 100  # k: items kept by the GSU for the ESU
    short_len: int = 50
    din_len: int = 100
    use_log_size: bool = True  # twinv2 ablation: False drops the ln n term
    mlp_dims: tuple[int, ...] = (200, 80)
    # Initialisation of the embedding tables and of TWIN's shared score (see RelevanceScore).
    embedding_std: float = 0.05
    # xavier | aligned (W_q starts equal to W_k) | matched (aligned, orthogonal, scaled so that an item
    # scores about 1 against itself at step 0: see RelevanceScore)
    score_init: str = "aligned"
    cross_beta_init: float = 1.0
    esu_null_slot: bool = False  # twin/twinv2 ESU: a learned "nothing relevant" slot joins the softmax
    # The learned GSU's score (twin, twinv2, dare). "paper": TWIN's alpha exactly as published. "match": alpha
    # plus gamma[f, a] * 1[target's categorical f == behavior's] for every categorical in `match_features`
    # (None = every inherent categorical of the dataset; code 0 never matches), in both stages, so GSU and
    # ESU stay consistent. gamma starts at `match_init`: a large start also makes the ESU selective (its
    # softmax concentrates on the matching behaviors); chosen on validation GAUC (docs/models.md).
    # The ESU also hands the MLP each head's logsumexp of alpha over the kept (how strongly they matched): a
    # softmax alone cannot say "none of these is relevant", which a category filter's empty set does.
    esu_evidence: bool = False
    relevance: str = "match"
    match_init: float = 5.0
    match_features: tuple[str, ...] | None = None
    # DARE (Feng et al., ICLR 2025): the learned score reads its own embedding tables (item id of
    # `attention_dim`, each side feature of `feature_dim`), separate from the representation tables the ESU
    # values, the short-term module and the MLP use. Always on for long_term="dare".
    attention_embeddings: bool = False
    attention_dim: int = 16
    # Numeric bucketisation (see embeddings.py): features named here are ratios in [0, 1] (uniform buckets);
    # every other numeric gets signed log2 buckets. `label` is a ratio because virtual items carry its mean.
    ratio_features: tuple[str, ...] = ("completion_ratio", "label")
    ratio_buckets: int = 20
    log_buckets_per_octave: int = 2  # half-octave resolution: durations 60 s and 85 s fall in different buckets
    # SIM (hard): the inherent categorical matched against the target's; None picks `category_id` if the
    # manifest has it, else the first inherent categorical.
    sim_category: str | None = None
    eta_hash_bits: int = 64  # ETA: SimHash signature length m
    sdim_num_hashes: int = 48  # SDIM: number of hash functions
    sdim_hash_bits: int = 3  # SDIM: tau, bits per hash function (2**tau buckets)
    hash_seed: int = 0  # seeds the fixed random hyperplanes of ETA and SDIM

    def __post_init__(self) -> None:
        if self.long_term not in LONG_TERM_NAMES:
            raise ConfigError(f"unknown long-term model {self.long_term!r}; valid names: "
                              f"{', '.join(LONG_TERM_NAMES)}")
        # Coerce sequences from YAML/JSON (lists) to tuples so the frozen config stays hashable.
        object.__setattr__(self, "mlp_dims", tuple(self.mlp_dims))
        object.__setattr__(self, "ratio_features", tuple(self.ratio_features))
        if self.match_features is not None:
            if isinstance(self.match_features, str) or not all(isinstance(f, str) for f in self.match_features):
                raise ConfigError(f"model config 'match_features' must be null or a list of names, "
                                  f"got {self.match_features!r}")
            object.__setattr__(self, "match_features", tuple(self.match_features))
        positive = ("id_dim", "feature_dim", "num_heads", "head_dim", "esu_size", "short_len", "din_len",
                    "ratio_buckets", "log_buckets_per_octave", "eta_hash_bits", "sdim_num_hashes",
                    "sdim_hash_bits", "attention_dim")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model config '{name}' must be a positive integer, got {value!r}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in self.mlp_dims):
            raise ConfigError(f"model config 'mlp_dims' must be positive integers, got {self.mlp_dims!r}")
        if self.sdim_hash_bits > 16:
            raise ConfigError(f"model config 'sdim_hash_bits' must be <= 16 (2**tau buckets), "
                              f"got {self.sdim_hash_bits}")
        if self.score_init not in ("xavier", "aligned", "matched"):
            raise ConfigError(f"model config 'score_init' must be 'xavier', 'aligned' or 'matched', "
                              f"got {self.score_init!r}")
        if self.relevance not in RELEVANCE_NAMES:
            raise ConfigError(f"model config 'relevance' must be one of {', '.join(RELEVANCE_NAMES)}, "
                              f"got {self.relevance!r}")
        if isinstance(self.match_init, bool) or not isinstance(self.match_init, (int, float)) \
                or not math.isfinite(self.match_init):
            raise ConfigError(f"model config 'match_init' must be a finite number, got {self.match_init!r}")
        if not isinstance(self.esu_evidence, bool):
            raise ConfigError(f"model config 'esu_evidence' must be true or false, got {self.esu_evidence!r}")
        if not isinstance(self.attention_embeddings, bool):
            raise ConfigError(f"model config 'attention_embeddings' must be true or false, "
                              f"got {self.attention_embeddings!r}")
        if not self.embedding_std > 0:
            raise ConfigError(f"model config 'embedding_std' must be > 0, got {self.embedding_std!r}")
        if not isinstance(self.use_log_size, bool):
            raise ConfigError(f"model config 'use_log_size' must be true or false, got {self.use_log_size!r}")

    @property
    def decoupled_attention(self) -> bool:
        """Whether the learned score reads its own (DARE) embedding tables: ``dare``, or the option."""
        return self.attention_embeddings or self.long_term == "dare"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["mlp_dims"] = list(self.mlp_dims)
        d["ratio_features"] = list(self.ratio_features)
        d["match_features"] = None if self.match_features is None else list(self.match_features)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model config") -> ModelConfig:
        """Strict construction: an unknown key is a :class:`ConfigError` naming ``source`` and the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown model key(s) {unknown}; valid keys: {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as exc:  # e.g. a non-iterable mlp_dims
            raise ConfigError(f"{source}: {exc}") from exc
