"""The item universe: categories, authors, items with latent vectors, popularity and quality, and the
sampling tables the exposure policy draws from (docs/synthetic.md, "Items")."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twinv2.data.synth._sampling import STREAM_ITEMS, as_seed_int, normalised_cdf, rng_stream, unit_rows, zipf_weights
from twinv2.data.synth.config import SynthConfig

__all__ = ["ItemUniverse", "build_items"]


@dataclass
class ItemUniverse:
    """Items, their ground truth and the sampling tables of the exposure policy.

    Arrays indexed by item id have a padding row 0. ``I`` = items, ``C`` = categories, ``D`` = latent dim.

    Attributes:
        category, author: int64 ``[I + 1]`` codes (1-based; 0 only in the padding row).
        duration: float32 ``[I + 1]`` seconds.
        latent: float32 ``[I + 1, D]`` unit vectors (ground truth; row 0 zeros).
        popularity: float64 ``[I + 1]`` exposure probabilities of the popular channel (sum 1).
        quality: float32 ``[I + 1]`` additive click/completion logit of each item.
        category_centers: float64 ``[C + 1, D]`` unit vectors (row 0 zeros).
        category_size: int64 ``[C + 1]`` items per category.
        author_categories: list of int64 arrays, the categories each author covers (index 0 unused).
        popular_cdf: float64 ``[I]`` cumulative popularity of items 1..I.
        by_category: int64 ``[I]`` item ids grouped by category (categories in increasing order).
        category_cdf: float64 ``[I]``: ``(k - 1) + `` cumulative within-category popularity, aligned with
            ``by_category``, so ``searchsorted(category_cdf, (k - 1) + u)`` draws from category ``k``.
        category_end: int64 ``[C + 1]`` one past the last position of category ``k`` in ``by_category``.
        nonempty: int64 ``[C']`` categories that hold at least one item.
    """

    category: np.ndarray
    author: np.ndarray
    duration: np.ndarray
    latent: np.ndarray
    popularity: np.ndarray
    quality: np.ndarray
    category_centers: np.ndarray
    category_size: np.ndarray
    author_categories: list[np.ndarray]
    popular_cdf: np.ndarray
    by_category: np.ndarray
    category_cdf: np.ndarray
    category_end: np.ndarray
    nonempty: np.ndarray

    @property
    def num_items(self) -> int:
        return len(self.category) - 1

    def sample_popular(self, u: np.ndarray) -> np.ndarray:
        """Items drawn by popularity from uniforms ``u`` in [0, 1) (float64 ``[n]`` -> int64 ``[n]``)."""
        idx = np.searchsorted(self.popular_cdf, u, side="right")
        return np.minimum(idx, self.num_items - 1).astype(np.int64) + 1

    def sample_in_category(self, categories: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Items drawn by popularity within non-empty ``categories`` (int64 ``[n]``) from uniforms ``u``."""
        idx = np.searchsorted(self.category_cdf, (categories - 1) + u, side="right")
        # (k - 1) + u can round up to k in float64 when u is within 1e-14 of 1: stay inside category k.
        idx = np.minimum(idx, self.category_end[categories] - 1)
        return self.by_category[idx]


def build_items(config: SynthConfig, seed: int | np.random.Generator = 0) -> ItemUniverse:
    """Draw the item universe: categories, authors, items, latent vectors, popularity and quality.

    Categories get random unit centres ``c_k``; each author a main category (Zipf over categories) plus a
    few secondary ones with Dirichlet weights and a style vector ``s_a``; each item an author (Zipf
    productivity), a category from that author's focus, a latent vector
    ``v = normalise(c_k + author_style * s_a + item_noise * e)`` and a lognormal duration around its
    category's median.
    """
    cfg = config
    rng = rng_stream(as_seed_int(seed), STREAM_ITEMS)
    C, A, n_items, D = cfg.num_categories, cfg.num_authors, cfg.num_items, cfg.latent_dim

    centers = np.zeros((C + 1, D))
    centers[1:] = unit_rows(rng.standard_normal((C, D)))
    category_share = zipf_weights(C, cfg.category_zipf, rng)
    log_median_duration = rng.uniform(math.log(cfg.duration_median_min), math.log(cfg.duration_median_max), C)

    # Authors: a main category plus Binomial(secondary_max, 0.5) others, focus weights ~ Dirichlet(1).
    main_category = rng.choice(C, size=A, p=category_share) + 1
    n_secondary = rng.binomial(cfg.author_secondary_max, 0.5, size=A)
    author_categories: list[np.ndarray] = [np.zeros(0, np.int64)]
    author_focus: list[np.ndarray] = [np.zeros(0)]
    for a in range(A):
        others = rng.choice(C, size=min(int(n_secondary[a]), C - 1), replace=False) + 1
        cats = np.concatenate([[main_category[a]], others[others != main_category[a]]]).astype(np.int64)
        focus = rng.dirichlet(np.ones(len(cats)))
        # The main category gets at least half of the author's items: authors *focus* on a few categories.
        focus = 0.5 * np.eye(len(cats))[0] + 0.5 * focus
        author_categories.append(cats)
        author_focus.append(focus)
    style = rng.standard_normal((A + 1, D)) / math.sqrt(D)

    author = rng.choice(A, size=n_items, p=zipf_weights(A, cfg.author_zipf, rng)) + 1
    u_cat = rng.random(n_items)
    category = np.empty(n_items, np.int64)
    for a in np.unique(author):
        rows = np.flatnonzero(author == a)
        pick = np.searchsorted(normalised_cdf(author_focus[a]), u_cat[rows], side="right")
        category[rows] = author_categories[a][np.minimum(pick, len(author_categories[a]) - 1)]

    noise = rng.standard_normal((n_items, D)) / math.sqrt(D)
    latent = unit_rows(centers[category] + cfg.author_style * style[author] + cfg.item_noise * noise)
    duration = np.exp(log_median_duration[category - 1] + cfg.duration_sigma * rng.standard_normal(n_items))
    duration = np.clip(duration, cfg.duration_min, cfg.duration_max).astype(np.float32)

    popularity = zipf_weights(n_items, cfg.item_zipf, rng)
    log_pop = np.log(popularity)
    z_pop = (log_pop - log_pop.mean()) / max(log_pop.std(), 1e-12)
    quality = (cfg.quality_sd * rng.standard_normal(n_items) + cfg.pop_quality_slope * z_pop).astype(np.float32)

    # Sampling tables: items grouped by category, popularity CDF within each category offset by (k - 1).
    by_category = np.argsort(category, kind="stable")
    sorted_cat = category[by_category]
    category_size = np.bincount(category, minlength=C + 1).astype(np.int64)
    category_end = np.cumsum(category_size).astype(np.int64)
    p_sorted = popularity[by_category]
    within = np.cumsum(p_sorted)
    start_of = category_end - category_size  # first position of each category
    cat_total = np.add.reduceat(p_sorted, start_of[1:][category_size[1:] > 0])
    prev = within[start_of[sorted_cat]] - p_sorted[start_of[sorted_cat]]  # mass before the category
    totals = np.zeros(C + 1)
    totals[np.flatnonzero(category_size[1:] > 0) + 1] = cat_total
    frac = (within - prev) / totals[sorted_cat]
    last = category_end[sorted_cat] - 1 == np.arange(n_items)
    frac[last] = 1.0
    category_cdf = (sorted_cat - 1) + frac

    pad = np.zeros(1)
    return ItemUniverse(
        category=np.concatenate([[0], category]).astype(np.int64),
        author=np.concatenate([[0], author]).astype(np.int64),
        duration=np.concatenate([pad.astype(np.float32), duration]),
        latent=np.vstack([np.zeros((1, D)), latent]).astype(np.float32),
        popularity=np.concatenate([pad, popularity]),
        quality=np.concatenate([pad.astype(np.float32), quality]),
        category_centers=centers,
        category_size=category_size,
        author_categories=author_categories,
        popular_cdf=normalised_cdf(popularity),
        by_category=(by_category + 1).astype(np.int64),
        category_cdf=category_cdf,
        category_end=category_end,
        nonempty=np.flatnonzero(category_size[1:] > 0).astype(np.int64) + 1,
    )
