"""Randomness and small sampling helpers shared by the generator's modules.

The public ``seed`` is converted once (:func:`as_seed_int`); every purpose then draws from its own stream,
keyed by ``(seed, purpose[, user_id])`` (:func:`rng_stream`), so that a user's events do not depend on how
many users are generated or in which order.
"""

from __future__ import annotations

import numpy as np

from twinv2.errors import ConfigError

__all__ = ["STREAM_ACTIVITY", "STREAM_ITEMS", "STREAM_USER", "as_seed_int", "normalised_cdf", "rng_stream",
           "unit_rows", "zipf_weights"]

# Spawn keys of the independent random streams (see module docstring).
STREAM_ITEMS, STREAM_ACTIVITY, STREAM_USER = 0, 1, 2


def as_seed_int(seed: int | np.random.Generator) -> int:
    """Convert the public ``seed`` argument once into the integer every stream is derived from."""
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63 - 1))
    if isinstance(seed, (bool, float)) or int(seed) < 0:
        raise ConfigError(f"synth: seed={seed!r} should be a non-negative integer or a numpy Generator")
    return int(seed)


def rng_stream(seed: int, *key: int) -> np.random.Generator:
    """The independent PCG64 stream of ``(seed, *key)`` (e.g. ``(seed, STREAM_USER, user_id)``)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (no input validation: rows are assumed non-zero)."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities ``rank^-exponent`` over ``n`` entries, with ranks assigned at random. float64 ``[n]``."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    w = w[rng.permutation(n)]
    return w / w.sum()


def normalised_cdf(p: np.ndarray) -> np.ndarray:
    """Cumulative sums of probabilities with the last entry exactly 1 (so a uniform in [0, 1) always lands)."""
    c = np.cumsum(p)
    c /= c[-1]
    c[-1] = 1.0
    return c
