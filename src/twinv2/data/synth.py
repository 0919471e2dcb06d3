"""Synthetic life cycles: items, heavy-tailed user activity and multi-kind interests over years.

No public dataset holds life cycles of 10^4-10^6 behaviors per user, so the default dataset is generated.
The generative model is stated in ``docs/synthetic.md`` (formulas, every parameter and its default); this
module implements exactly that model. In short:

- items have a category, an author (authors focus on a few categories), a duration, a Zipf popularity, a
  quality and a latent unit vector near their category's centre;
- each user has a lognormal number of events (the heaviest user is pinned at ``max_events``), a life span
  that ends at the horizon, sessions at diurnal times, and 2-6 interests of three kinds: *stable*,
  *drifting* (the vector turns along a great circle toward another category) and *dormant* (active only a
  few weeks per period, e.g. each year);
- each exposure comes from the popular channel, an exploration channel or the user's current interests;
  the click and the play time follow from the user's affinity to the item at that time, plus noise.

Ground truth (interests, item vectors) goes to ``ground_truth/`` in the dataset folder; no model reads it.
Randomness: one ``SeedSequence`` per purpose (items, activity) and one per user, keyed by
``(seed, user_id)``, so a user's events do not depend on how many users are generated or in which order.

Example:
    >>> from twinv2.data.synth import synthesize
    >>> manifest = synthesize("data/synth-small", scale="small", seed=0)  # doctest: +SKIP
    >>> manifest.notes["max_user_events"]  # doctest: +SKIP
    3000
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twinv2._io import save_npy_atomic
from twinv2.data.schema import MANIFEST_NAME, ColumnSpec, Manifest
from twinv2.data.store import EVENTS_FILE, DatasetWriter, check_out_dir
from twinv2.errors import ConfigError, DataValidationError

__all__ = [
    "GROUND_TRUTH_FILES",
    "INTEREST_KINDS",
    "SCALES",
    "ItemUniverse",
    "SynthConfig",
    "UserTruth",
    "activity_counts",
    "build_items",
    "config_for_scale",
    "dormant_active",
    "generate_user",
    "load_click_prob",
    "synthesize",
]

DAY = 86_400
WEEK = 7 * DAY
YEAR_DAYS = 365.25
INTEREST_KINDS = ("stable", "drifting", "dormant")
STABLE, DRIFTING, DORMANT = 0, 1, 2
# Spawn keys of the independent random streams (see module docstring).
_STREAM_ITEMS, _STREAM_ACTIVITY, _STREAM_USER = 0, 1, 2
# Rows of the latent-vector product computed at once: bounds memory for a user with 10^6 events.
_AFFINITY_BLOCK = 1 << 16
# Fixed-point passes that align the interest state with the final session times (see generate_user).
_MAX_TIMING_PASSES = 4
_TIMING_TOLERANCE_SECONDS = 3600.0

GROUND_TRUTH_FILES = {
    "users": "ground_truth/users.parquet",
    "interests": "ground_truth/interests.parquet",
    "items": "ground_truth/items.parquet",
    "item_latent": "ground_truth/item_latent.npy",
    "category_centers": "ground_truth/category_centers.npy",
    "click_prob": "ground_truth/click_prob.npy",
}

ITEM_COLUMNS = [
    ColumnSpec("item_id", "id", "int64", description="dense item id, 1..num_items (0 = padding)"),
    ColumnSpec("category_id", "inherent_categorical", "int64", description="item category, 1..num_categories"),
    ColumnSpec("author_id", "inherent_categorical", "int64", description="item author, 1..num_authors"),
    ColumnSpec("duration", "inherent_numeric", "float32", description="video duration in seconds"),
    ColumnSpec("raw_item_id", "raw_id", "string", description="synthetic source id"),
]
EVENT_COLUMNS = [
    ColumnSpec("user_id", "id", "int64", description="dense user id"),
    ColumnSpec("item_id", "id", "int64", description="exposed item"),
    ColumnSpec("ts", "timestamp", "int64", description="request time, unix seconds (a page shares one)"),
    ColumnSpec("label", "label", "int8", description="1 if the user clicked the exposed item"),
    ColumnSpec("play_time", "cross_numeric", "float32", description="seconds played (0 without a click)"),
    ColumnSpec("completion_ratio", "cross_numeric", "float32",
               description="play_time / duration clipped to [0, 1]"),
]


@dataclass(frozen=True)
class SynthConfig:
    """Every parameter of the generative model; the defaults are the ``default`` scale.

    ``docs/synthetic.md`` gives the formula each parameter enters. Times are seconds unless a name says
    otherwise; angles are degrees.
    """

    # -- population ----------------------------------------------------------------------------------
    num_users: int = 4000
    num_items: int = 20_000
    num_categories: int = 200
    num_authors: int = 2000
    latent_dim: int = 32
    start_ts: int = 1_577_836_800  # 2020-01-01 00:00 UTC
    horizon_days: int = 1095  # three years: long enough for a yearly interest to come back twice

    # -- activity (events per user and life span) ------------------------------------------------------
    events_median: float = 250.0  # median events per user: most users have hundreds
    events_sigma: float = 1.3  # lognormal shape; 1.3 puts ~0.2% of users above 40x the median
    min_events: int = 20
    max_events: int = 20_000  # cap per user; the heaviest user is pinned at exactly this count
    min_span_frac: float = 0.25  # shortest life span as a fraction of the horizon (before stretching)
    max_daily_events: float = 150.0  # spans are stretched so that events/day stay below this if possible
    activity_trend_sd: float = 0.7  # per-user trend: session density over the span ~ exp(trend * x)

    # -- interests -----------------------------------------------------------------------------------
    interests_min: int = 2
    interests_extra: int = 4  # number of interests = interests_min + Binomial(interests_extra, 0.5)
    p_drifting: float = 0.3  # kind probabilities of every interest but the first (always stable)
    p_dormant: float = 0.3
    interest_weight_alpha: float = 1.0  # Dirichlet concentration of interest weights
    interest_noise: float = 0.5  # interest vector = normalise(category centre + interest_noise * noise)
    drift_deg_per_year_min: float = 30.0  # drift speed is log-uniform in [min, max]
    drift_deg_per_year_max: float = 120.0
    drift_max_deg: float = 90.0  # a drifting interest stops once it has turned this far (at its target)
    dormant_annual_prob: float = 0.6  # share of dormant interests with a yearly (seasonal) period
    dormant_period_days_min: float = 90.0  # otherwise the period is uniform in [min, max] days
    dormant_period_days_max: float = 240.0
    dormant_window_days_min: float = 10.0  # length of each active window, uniform in [min, max] days
    dormant_window_days_max: float = 35.0
    dormant_boost: float = 3.0  # weight multiplier of a dormant interest inside its window (0 outside)

    # -- items ---------------------------------------------------------------------------------------
    item_zipf: float = 0.9  # item popularity ~ rank^-item_zipf
    category_zipf: float = 0.8  # share of authors whose main category is k ~ rank^-category_zipf
    author_zipf: float = 0.8  # author productivity ~ rank^-author_zipf
    author_secondary_max: int = 2  # an author also covers Binomial(author_secondary_max, 0.5) categories
    author_style: float = 0.5  # weight of the author's style vector in an item vector
    item_noise: float = 0.5  # weight of the item's own noise vector
    duration_median_min: float = 15.0  # per-category median duration, log-uniform in [min, max] seconds
    duration_median_max: float = 180.0
    duration_sigma: float = 0.6  # lognormal spread of durations within a category
    duration_min: float = 3.0
    duration_max: float = 1200.0
    quality_sd: float = 0.3  # item quality q ~ N(0, quality_sd^2) + pop_quality_slope * z(log popularity)
    pop_quality_slope: float = 0.15

    # -- exposures and sessions ----------------------------------------------------------------------
    p_popular: float = 0.25  # exposure drawn from global popularity
    p_explore: float = 0.10  # exposure from a uniformly random category (the rest: personalised)
    rec_temperature: float = 10.0  # sharpness of the personalised category choice softmax
    page_extra_mean: float = 0.3  # items per request = 1 + Poisson(page_extra_mean); a page shares a ts
    session_pages_mean: float = 8.0  # requests per session ~ Geometric with this mean
    browse_seconds_mean: float = 4.0  # time looking at each exposed item ~ Exponential(mean)
    session_gap_min_seconds: float = 300.0  # sessions never overlap: at least this idle time between them
    evening_hour: float = 21.0  # diurnal mixture of session start times (hours, UTC)
    evening_sd_hours: float = 2.0
    evening_weight: float = 0.55
    noon_hour: float = 12.5
    noon_sd_hours: float = 1.5
    noon_weight: float = 0.25  # the rest (0.2) is uniform over the day

    # -- clicks and play time -------------------------------------------------------------------------
    click_bias: float = -2.7
    affinity_scale: float = 4.0  # click logit slope on affinity
    affinity_sharpness: float = 5.0  # kappa of the soft maximum over interests
    user_bias_sd: float = 0.5  # per-user click propensity
    logit_noise_sd: float = 0.5
    completion_bias: float = -1.0
    completion_affinity: float = 2.5
    completion_duration_slope: float = -0.5  # longer videos are finished less often
    completion_noise_sd: float = 0.8
    replay_prob: float = 0.05  # a click that loops the video: play time in (1, 2) x duration

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first parameter that is out of range."""
        positive_ints = ("num_users", "num_items", "num_categories", "num_authors", "latent_dim",
                         "horizon_days", "min_events", "max_events", "interests_min")
        for name in positive_ints:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"synth config: {name}={getattr(self, name)} should be >= 1")
        if self.max_events < self.min_events:
            raise ConfigError(f"synth config: max_events={self.max_events} should be >= "
                              f"min_events={self.min_events}")
        probs = ("p_drifting", "p_dormant", "p_popular", "p_explore", "dormant_annual_prob", "replay_prob",
                 "min_span_frac", "evening_weight", "noon_weight")
        for name in probs:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"synth config: {name}={getattr(self, name)} should be in [0, 1]")
        for a, b in (("p_drifting", "p_dormant"), ("p_popular", "p_explore"), ("evening_weight", "noon_weight")):
            if getattr(self, a) + getattr(self, b) > 1.0:
                raise ConfigError(f"synth config: {a} + {b} = {getattr(self, a) + getattr(self, b)} "
                                  "should be <= 1")
        positive = ("events_median", "events_sigma", "max_daily_events", "interest_weight_alpha",
                    "drift_deg_per_year_min", "dormant_period_days_min", "dormant_window_days_min",
                    "duration_median_min", "duration_min", "session_pages_mean", "browse_seconds_mean",
                    "affinity_sharpness", "evening_sd_hours", "noon_sd_hours")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"synth config: {name}={getattr(self, name)} should be > 0")
        non_negative = ("activity_trend_sd", "interest_noise", "drift_max_deg", "dormant_boost", "item_zipf",
                        "category_zipf", "author_zipf", "author_secondary_max", "author_style", "item_noise",
                        "duration_sigma", "quality_sd", "rec_temperature", "page_extra_mean",
                        "session_gap_min_seconds", "user_bias_sd", "logit_noise_sd", "completion_noise_sd",
                        "interests_extra")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"synth config: {name}={getattr(self, name)} should be >= 0")
        for lo, hi in (("drift_deg_per_year_min", "drift_deg_per_year_max"),
                       ("dormant_period_days_min", "dormant_period_days_max"),
                       ("dormant_window_days_min", "dormant_window_days_max"),
                       ("duration_median_min", "duration_median_max"), ("duration_min", "duration_max")):
            if getattr(self, hi) < getattr(self, lo):
                raise ConfigError(f"synth config: {hi}={getattr(self, hi)} should be >= {lo}={getattr(self, lo)}")


SCALES: dict[str, SynthConfig] = {
    # For tests and quick looks: ~80k events, a 3000-event user, two years.
    "small": SynthConfig(num_users=300, num_items=2000, num_categories=40, num_authors=200,
                         horizon_days=730, events_median=150.0, events_sigma=1.0, max_events=3000),
    # The default dataset: ~2M events, several users above 10^4, three years.
    "default": SynthConfig(),
    # Streaming scale: a 2*10^5-event user; --max-events 1000000 pins the heaviest user at 10^6.
    "large": SynthConfig(num_users=20_000, num_items=100_000, num_categories=500, num_authors=10_000,
                         events_median=300.0, max_events=200_000),
    # Life-cycle regime (~5M events): heavy users (~12% above 10^4 events), a finer catalogue whose
    # neighbouring categories share taste directions, and more interests that sleep for months and come
    # back for days. Chosen by the life-cycle headroom of the data alone (docs/synthetic.md), before any model.
    "lifecycle": SynthConfig(num_users=1000, num_items=60_000, num_categories=1500, num_authors=6000,
                             latent_dim=12, events_median=3000.0, events_sigma=1.0, min_events=500,
                             max_events=100_000, interests_extra=8, p_drifting=0.1, p_dormant=0.6,
                             dormant_annual_prob=0.4, dormant_period_days_min=60.0,
                             dormant_period_days_max=365.0, dormant_window_days_min=2.0,
                             dormant_window_days_max=10.0),
}


def config_for_scale(scale: str = "default", *, users: int | None = None,
                     max_events: int | None = None) -> SynthConfig:
    """The preset of ``scale`` with optional overrides of the user count and the per-user cap."""
    if scale not in SCALES:
        raise ConfigError(f"synth: scale={scale!r} should be one of {sorted(SCALES)}")
    cfg = SCALES[scale]
    if users is not None:
        cfg = dataclasses.replace(cfg, num_users=int(users))
    if max_events is not None:
        cfg = dataclasses.replace(cfg, max_events=int(max_events))
    cfg.validate()
    return cfg


def _seed_int(seed: int | np.random.Generator) -> int:
    """Convert the public ``seed`` argument once into the integer every stream is derived from."""
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63 - 1))
    if isinstance(seed, (bool, float)) or int(seed) < 0:
        raise ConfigError(f"synth: seed={seed!r} should be a non-negative integer or a numpy Generator")
    return int(seed)


def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (no input validation: rows are assumed non-zero)."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities ``rank^-exponent`` over ``n`` entries, with ranks assigned at random. float64 ``[n]``."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    w = w[rng.permutation(n)]
    return w / w.sum()


def _cdf(p: np.ndarray) -> np.ndarray:
    """Cumulative sums of probabilities with the last entry exactly 1 (so a uniform in [0, 1) always lands)."""
    c = np.cumsum(p)
    c /= c[-1]
    c[-1] = 1.0
    return c


# ---- items ------------------------------------------------------------------------------------------


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
    rng = _stream(_seed_int(seed), _STREAM_ITEMS)
    C, A, n_items, D = cfg.num_categories, cfg.num_authors, cfg.num_items, cfg.latent_dim

    centers = np.zeros((C + 1, D))
    centers[1:] = _unit_rows(rng.standard_normal((C, D)))
    category_share = _zipf_weights(C, cfg.category_zipf, rng)
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

    author = rng.choice(A, size=n_items, p=_zipf_weights(A, cfg.author_zipf, rng)) + 1
    u_cat = rng.random(n_items)
    category = np.empty(n_items, np.int64)
    for a in np.unique(author):
        rows = np.flatnonzero(author == a)
        pick = np.searchsorted(_cdf(author_focus[a]), u_cat[rows], side="right")
        category[rows] = author_categories[a][np.minimum(pick, len(author_categories[a]) - 1)]

    noise = rng.standard_normal((n_items, D)) / math.sqrt(D)
    latent = _unit_rows(centers[category] + cfg.author_style * style[author] + cfg.item_noise * noise)
    duration = np.exp(log_median_duration[category - 1] + cfg.duration_sigma * rng.standard_normal(n_items))
    duration = np.clip(duration, cfg.duration_min, cfg.duration_max).astype(np.float32)

    popularity = _zipf_weights(n_items, cfg.item_zipf, rng)
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
        popular_cdf=_cdf(popularity),
        by_category=(by_category + 1).astype(np.int64),
        category_cdf=category_cdf,
        category_end=category_end,
        nonempty=np.flatnonzero(category_size[1:] > 0).astype(np.int64) + 1,
    )


# ---- users ------------------------------------------------------------------------------------------


def activity_counts(config: SynthConfig, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Events per user, int64 ``[U]``.

    ``n_u = clip(round(exp(ln(events_median) + events_sigma * z_u)), min_events, max_events)``; the user
    with the largest draw is then pinned at exactly ``max_events`` so that every scale holds one ultra-long
    life cycle whatever the seed. Draws come in user order from one stream, so a prefix of users keeps its
    counts when more users are generated (only the pinned user may change).
    """
    rng = _stream(_seed_int(seed), _STREAM_ACTIVITY)
    z = rng.standard_normal(config.num_users)
    n = np.rint(np.exp(math.log(config.events_median) + config.events_sigma * z))
    n = np.clip(n, config.min_events, config.max_events).astype(np.int64)
    n[int(np.argmax(z))] = config.max_events
    return n


@dataclass
class UserTruth:
    """One user's ground truth. ``K`` = number of interests, ``D`` = latent dim.

    Interest ``j`` points along ``cos(theta_j(t)) a_j + sin(theta_j(t)) b_j`` with ``a_j, b_j`` orthonormal
    and ``theta_j(t) = min(drift_max_j, drift_rate_j * (t - join_ts))`` (zero for non-drifting interests).
    A dormant interest is active when ``((t - start_ts) / 86400 - phase_days) mod period_days < window_days``.

    Attributes:
        kind: int8 ``[K]`` index into ``INTEREST_KINDS``; weight: float64 ``[K]`` (sums to 1).
        category: int64 ``[K]`` anchor category; target_category: int64 ``[K]`` (0 unless drifting).
        drift_rate: float64 ``[K]`` radians per second; drift_max: float64 ``[K]`` radians.
        period_days, phase_days, window_days: float64 ``[K]`` (0 unless dormant).
        vec_a, vec_b: float64 ``[K, D]`` (``vec_b`` zero unless drifting).
        click_prob: float32 ``[num_events]`` the true click probability of each of the user's events, in
            event order (filled by :func:`generate_user`).
    """

    user_id: int
    num_events: int
    join_ts: int
    click_bias: float
    activity_trend: float
    kind: np.ndarray
    weight: np.ndarray
    category: np.ndarray
    target_category: np.ndarray
    drift_rate: np.ndarray
    drift_max: np.ndarray
    period_days: np.ndarray
    phase_days: np.ndarray
    window_days: np.ndarray
    vec_a: np.ndarray
    vec_b: np.ndarray
    extra: dict[str, float] = field(default_factory=dict)
    click_prob: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


def dormant_active(period_days: np.ndarray, phase_days: np.ndarray, window_days: np.ndarray,
                   ts: np.ndarray, start_ts: int) -> np.ndarray:
    """Whether dormant interests are in an active window at times ``ts`` (seconds).

    Shapes broadcast: e.g. ``[K]`` interest parameters against ``[E, 1]`` times give bool ``[E, K]``.
    Interests with ``period_days == 0`` (not dormant) are reported inactive.
    """
    days = (np.asarray(ts, dtype=np.float64) - start_ts) / DAY
    period = np.where(period_days > 0, period_days, 1.0)
    return (period_days > 0) & (np.mod(days - phase_days, period) < window_days)


def _draw_user(rng: np.random.Generator, items: ItemUniverse, cfg: SynthConfig, user_id: int,
               num_events: int) -> UserTruth:
    """Draw a user's interests and life span (no input validation)."""
    D = cfg.latent_dim
    K = cfg.interests_min + int(rng.binomial(cfg.interests_extra, 0.5))
    K = min(K, len(items.nonempty))
    kind = np.zeros(K, np.int8)
    p_stable = 1.0 - cfg.p_drifting - cfg.p_dormant
    kind[1:] = rng.choice(3, size=K - 1, p=[p_stable, cfg.p_drifting, cfg.p_dormant])  # first: stable
    weight = rng.dirichlet(np.full(K, cfg.interest_weight_alpha))
    # Interest categories: distinct, more likely in big categories (where users find content).
    cat_p = items.category_size[items.nonempty] / items.category_size[items.nonempty].sum()
    category = rng.choice(items.nonempty, size=K, replace=False, p=cat_p).astype(np.int64)
    vec_a = _unit_rows(items.category_centers[category]
                       + cfg.interest_noise * rng.standard_normal((K, D)) / math.sqrt(D))

    target = np.zeros(K, np.int64)
    vec_b = np.zeros((K, D))
    drift_rate = np.zeros(K)
    drift_max = np.zeros(K)
    period = np.zeros(K)
    phase = np.zeros(K)
    window = np.zeros(K)
    for j in np.flatnonzero(kind == DRIFTING):
        p = cat_p.copy()
        p[items.nonempty == category[j]] = 0.0
        if p.sum() == 0:  # a single non-empty category: nowhere to drift, the interest stays put
            kind[j] = STABLE
            continue
        target[j] = rng.choice(items.nonempty, p=p / p.sum())
        b = items.category_centers[target[j]] + cfg.interest_noise * rng.standard_normal(D) / math.sqrt(D)
        b -= (b @ vec_a[j]) * vec_a[j]  # Gram-Schmidt: the great circle from a_j through b_j
        vec_b[j] = b / np.linalg.norm(b)
        deg_per_year = math.exp(rng.uniform(math.log(cfg.drift_deg_per_year_min),
                                            math.log(cfg.drift_deg_per_year_max)))
        drift_rate[j] = math.radians(deg_per_year) / (YEAR_DAYS * DAY)
        drift_max[j] = math.radians(cfg.drift_max_deg)
    for j in np.flatnonzero(kind == DORMANT):
        annual = rng.random() < cfg.dormant_annual_prob
        period[j] = YEAR_DAYS if annual else rng.uniform(cfg.dormant_period_days_min, cfg.dormant_period_days_max)
        window[j] = min(rng.uniform(cfg.dormant_window_days_min, cfg.dormant_window_days_max), period[j] / 2)
        phase[j] = rng.uniform(0.0, period[j])

    # Life span: ends at the horizon; stretched so that the mean rate stays below max_daily_events.
    span_days = cfg.horizon_days * rng.uniform(cfg.min_span_frac, 1.0)
    span_days = min(float(cfg.horizon_days), max(span_days, num_events / cfg.max_daily_events))
    end_ts = cfg.start_ts + cfg.horizon_days * DAY
    join_ts = int(end_ts - round(span_days * DAY))
    return UserTruth(
        user_id=user_id, num_events=num_events, join_ts=join_ts,
        click_bias=float(cfg.user_bias_sd * rng.standard_normal()),
        activity_trend=float(cfg.activity_trend_sd * rng.standard_normal()),
        kind=kind, weight=weight, category=category, target_category=target, drift_rate=drift_rate,
        drift_max=drift_max, period_days=period, phase_days=phase, window_days=window, vec_a=vec_a, vec_b=vec_b,
    )


def _interest_state(truth: UserTruth, ts: np.ndarray, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Mixture weights ``pi`` and drift angles ``theta`` at times ``ts``: float64 ``[n, K]`` each."""
    t = ts[:, None]
    theta = np.minimum(truth.drift_max, truth.drift_rate * np.maximum(t - truth.join_ts, 0.0))
    active = dormant_active(truth.period_days, truth.phase_days, truth.window_days, t, cfg.start_ts)
    mult = np.where(truth.kind == DORMANT, np.where(active, cfg.dormant_boost, 0.0), 1.0)
    w = truth.weight * mult
    # The first interest is always stable, so every row has positive mass.
    return w / w.sum(axis=1, keepdims=True), theta


def _session_starts(rng: np.random.Generator, truth: UserTruth, cfg: SynthConfig, n: int) -> np.ndarray:
    """Nominal start times (float64 seconds, sorted ``[n]``): day from the trend density, diurnal hour."""
    beta = truth.activity_trend
    u = rng.random(n)
    # Inverse CDF of the density proportional to exp(beta * x) on [0, 1].
    x = u if abs(beta) < 1e-9 else np.log1p(u * np.expm1(beta)) / beta
    end_ts = cfg.start_ts + cfg.horizon_days * DAY
    first_day = (truth.join_ts - cfg.start_ts) / DAY
    span_days = (end_ts - truth.join_ts) / DAY
    day = np.floor(first_day + x * span_days)
    day = np.clip(day, math.ceil(first_day), cfg.horizon_days - 1)
    which = rng.random(n)
    hours = np.where(which < cfg.evening_weight,
                     rng.normal(cfg.evening_hour, cfg.evening_sd_hours, n),
                     np.where(which < cfg.evening_weight + cfg.noon_weight,
                              rng.normal(cfg.noon_hour, cfg.noon_sd_hours, n), rng.uniform(0.0, 24.0, n)))
    seconds = np.mod(hours, 24.0) * 3600.0
    return np.sort(cfg.start_ts + day * DAY + seconds)


def _cut(sizes: np.ndarray, total: int) -> np.ndarray:
    """The shortest prefix of positive ``sizes`` summing to ``total``, the last entry trimmed."""
    cs = np.cumsum(sizes)
    n = int(np.searchsorted(cs, total, side="left")) + 1
    sizes = sizes[:n].copy()
    sizes[-1] -= int(cs[n - 1]) - total
    return sizes


def generate_user(items: ItemUniverse, config: SynthConfig, seed: int | np.random.Generator, user_id: int,
                  num_events: int) -> tuple[dict[str, np.ndarray], UserTruth]:
    """Generate one user's life cycle from its own stream ``(seed, user_id)``.

    Returns the events (columns of ``EVENT_COLUMNS``, each ``[num_events]``, sorted by ``ts`` with ties
    within a page) and the user's ground truth, including each event's true click probability
    (``truth.click_prob``, aligned with the events). The result depends only on ``(items, config, seed,
    user_id, num_events)``.
    """
    cfg = config
    rng = _stream(_seed_int(seed), _STREAM_USER, int(user_id))
    truth = _draw_user(rng, items, cfg, int(user_id), int(num_events))
    N = int(num_events)

    # Structure: pages (requests) of 1 + Poisson items, sessions of Geometric pages.
    page_size = _cut(1 + rng.poisson(cfg.page_extra_mean, N), N)
    P = len(page_size)
    session_pages = _cut(rng.geometric(1.0 / cfg.session_pages_mean, P), P)
    S = len(session_pages)
    page_of_event = np.repeat(np.arange(P), page_size)
    session_of_page = np.repeat(np.arange(S), session_pages)
    session_of_event = session_of_page[page_of_event]
    nominal = _session_starts(rng, truth, cfg, S)
    # All per-event randomness is drawn once, before any content: the passes below reuse it.
    noise = {name: rng.random(N) for name in ("channel", "interest", "category", "item", "click", "replay",
                                              "replay_extent")}
    noise["logit"] = rng.standard_normal(N)
    noise["completion"] = rng.standard_normal(N)
    noise["browse"] = rng.exponential(cfg.browse_seconds_mean, N)

    # Session times depend on play times, which depend on the interest state at those times. Solve the
    # loop by fixed-point passes: state at the session times of the previous pass. Sessions only move when
    # a user's demand exceeds the clock (the heaviest users), so one pass nearly always suffices.
    state_time = nominal
    for _ in range(_MAX_TIMING_PASSES):
        item, label, play_time, click_prob = _content(items, cfg, truth, state_time, session_of_event, noise)
        start, page_offset = _place_sessions(cfg, nominal, play_time, noise["browse"], page_of_event,
                                             session_of_page, session_pages)
        lag = float(np.abs(start - state_time).max())
        state_time = start
        if lag <= _TIMING_TOLERANCE_SECONDS:
            break
    truth.extra["max_session_shift_days"] = float((start - nominal).max() / DAY)
    truth.extra["max_state_lag_days"] = lag / DAY
    truth.click_prob = click_prob.astype(np.float32)

    duration = items.duration[item]
    events = {
        "user_id": np.full(N, truth.user_id, np.int64),
        "item_id": item,
        "ts": np.floor(start[session_of_page] + page_offset).astype(np.int64)[page_of_event],
        "label": label,
        "play_time": play_time,
        "completion_ratio": np.clip(play_time / duration, 0.0, 1.0).astype(np.float32),
    }
    return events, truth


def _content(items: ItemUniverse, cfg: SynthConfig, truth: UserTruth, session_time: np.ndarray,
             session_of_event: np.ndarray, noise: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Exposed items, clicks and play times given the session times (no input validation).

    Args:
        session_time: float64 ``[S]`` times at which each session's interest state is taken.
        session_of_event: int64 ``[N]``; noise: float64 ``[N]`` arrays drawn by :func:`generate_user`.
    Returns:
        item int64 ``[N]``, label int8 ``[N]``, play_time float32 ``[N]``, and the true click probability
        float64 ``[N]`` (the sigmoid of the click logit, from which the label is drawn).
    """
    N, K = len(session_of_event), len(truth.kind)
    pi_s, theta_s = _interest_state(truth, session_time, cfg)  # [S, K] each

    # Exposure channel of each event: popular, exploration, or one of the user's current interests.
    popular = noise["channel"] < cfg.p_popular
    explore = ~popular & (noise["channel"] < cfg.p_popular + cfg.p_explore)
    personal = ~popular & ~explore
    category = np.zeros(N, np.int64)
    n_cat = len(items.nonempty)
    category[explore] = items.nonempty[np.minimum((noise["category"][explore] * n_cat).astype(np.int64),
                                                  n_cat - 1)]
    if personal.any():
        sess = session_of_event[personal]
        cum_pi = np.cumsum(pi_s[sess], axis=1)
        interest = np.minimum((noise["interest"][personal, None] >= cum_pi).sum(axis=1), K - 1)
        category[personal] = _policy_categories(items, cfg, truth, interest, session_time[sess],
                                                noise["category"][personal])
    item = np.zeros(N, np.int64)
    item[popular] = items.sample_popular(noise["item"][popular])
    item[~popular] = items.sample_in_category(category[~popular], noise["item"][~popular])

    # Affinity: soft maximum over interests, weighted by their current mixture weights.
    kappa = cfg.affinity_sharpness
    affinity = np.empty(N)
    basis = np.concatenate([truth.vec_a, truth.vec_b]).T.astype(np.float32)  # [D, 2K]
    with np.errstate(divide="ignore"):
        log_pi_s = np.log(pi_s)  # -inf for dormant interests outside their window
    for lo in range(0, N, _AFFINITY_BLOCK):
        hi = min(N, lo + _AFFINITY_BLOCK)
        sess = session_of_event[lo:hi]
        proj = (items.latent[item[lo:hi]] @ basis).astype(np.float64)  # [n, 2K]: <v_i, a_j>, <v_i, b_j>
        th = theta_s[sess]
        cos = np.cos(th) * proj[:, :K] + np.sin(th) * proj[:, K:]  # [n, K]: <v_i, u_j(t)>
        z = kappa * cos + log_pi_s[sess]
        zmax = z.max(axis=1, keepdims=True)
        affinity[lo:hi] = (zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1))) / kappa

    quality = items.quality[item].astype(np.float64)
    logit = (cfg.click_bias + truth.click_bias + cfg.affinity_scale * affinity + quality
             + cfg.logit_noise_sd * noise["logit"])
    click_prob = 1.0 / (1.0 + np.exp(-logit))
    label = (noise["click"] < click_prob).astype(np.int8)

    duration = items.duration[item]
    c_logit = (cfg.completion_bias + cfg.completion_affinity * affinity
               + cfg.completion_duration_slope * (np.log(duration) - math.log(60.0)) + quality
               + cfg.completion_noise_sd * noise["completion"])
    ratio = np.where(noise["replay"] < cfg.replay_prob, 1.0 + noise["replay_extent"],
                     1.0 / (1.0 + np.exp(-c_logit)))
    play_time = np.where(label == 1, ratio * duration, 0.0).astype(np.float32)
    return item, label, play_time, click_prob


def _place_sessions(cfg: SynthConfig, nominal: np.ndarray, play_time: np.ndarray, browse: np.ndarray,
                    page_of_event: np.ndarray, session_of_page: np.ndarray,
                    session_pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Session start times float64 ``[S]`` and page offsets within their session float64 ``[P]``.

    A page is logged when requested; the next page comes after browsing its items and playing its
    clicks. Sessions never overlap: ``start_s = max(nominal_s, end_{s-1} + gap)``.
    """
    P, S = len(session_of_page), len(session_pages)
    spent = browse + play_time.astype(np.float64)
    page_time = np.bincount(page_of_event, weights=spent, minlength=P)
    before_page = np.cumsum(page_time) - page_time
    first_page = np.cumsum(session_pages) - session_pages
    page_offset = before_page - before_page[first_page][session_of_page]
    occupied = np.bincount(session_of_page, weights=page_time, minlength=S) + cfg.session_gap_min_seconds
    # With busy_s = sum of occupied_{s'} for s' < s, the recursion above is a cumulative maximum.
    busy = np.cumsum(occupied) - occupied
    return busy + np.maximum.accumulate(nominal - busy), page_offset


def _policy_categories(items: ItemUniverse, cfg: SynthConfig, truth: UserTruth, interest: np.ndarray,
                       ts: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Categories the recommender picks for interests ``interest`` at times ``ts`` (int64 ``[n]``).

    The policy sees each interest's direction once a week (recommenders lag): ``P(k) ~ exp(T <u_j(w), c_k>)``
    over non-empty categories. Only the (interest, week) rows that occur are evaluated.
    """
    C = cfg.num_categories
    weeks = math.ceil(cfg.horizon_days / 7)
    week = np.clip(((ts - cfg.start_ts) // WEEK).astype(np.int64), 0, weeks - 1)
    rows, inv = np.unique(interest * weeks + week, return_inverse=True)
    j, w = rows // weeks, rows % weeks
    t_mid = cfg.start_ts + (w + 0.5) * WEEK
    theta = np.minimum(truth.drift_max[j], truth.drift_rate[j] * np.maximum(t_mid - truth.join_ts, 0.0))
    cos_a = truth.vec_a @ items.category_centers.T  # [K, C + 1]
    cos_b = truth.vec_b @ items.category_centers.T
    logits = cfg.rec_temperature * (np.cos(theta)[:, None] * cos_a[j] + np.sin(theta)[:, None] * cos_b[j])
    logits[:, items.category_size == 0] = -np.inf  # includes the unknown code 0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    cdf[:, -1] = 1.0
    flat = (cdf + np.arange(len(rows))[:, None]).ravel()
    pos = np.searchsorted(flat, inv + u, side="right")
    pos = np.minimum(pos, (inv + 1) * (C + 1) - 1)
    return (pos - inv * (C + 1)).astype(np.int64)


# ---- writing ----------------------------------------------------------------------------------------


def _events_table(parts: list[dict[str, np.ndarray]]) -> pa.Table:
    cols = {c.name: np.concatenate([p[c.name] for p in parts]) for c in EVENT_COLUMNS}
    return pa.table(cols)


def _items_table(items: ItemUniverse) -> pa.Table:
    ids = np.arange(1, items.num_items + 1, dtype=np.int64)
    width = len(str(items.num_items))
    return pa.table({
        "item_id": ids,
        "category_id": items.category[1:],
        "author_id": items.author[1:],
        "duration": items.duration[1:],
        "raw_item_id": pa.array([f"synth-item-{i:0{width}d}" for i in ids], pa.string()),
    })


def _truth_tables(truths: list[UserTruth], cfg: SynthConfig) -> tuple[pa.Table, pa.Table]:
    """Ground-truth rows: one per user, one per interest."""
    D = cfg.latent_dim
    users = pa.table({
        "user_id": np.array([t.user_id for t in truths], np.int64),
        "num_events": np.array([t.num_events for t in truths], np.int64),
        "join_ts": np.array([t.join_ts for t in truths], np.int64),
        "click_bias": np.array([t.click_bias for t in truths], np.float32),
        "activity_trend": np.array([t.activity_trend for t in truths], np.float32),
        "num_interests": np.array([len(t.kind) for t in truths], np.int64),
        "max_session_shift_days": np.array([t.extra["max_session_shift_days"] for t in truths], np.float32),
        "max_state_lag_days": np.array([t.extra["max_state_lag_days"] for t in truths], np.float32),
    })
    k = np.array([len(t.kind) for t in truths])
    cat = np.concatenate
    to_deg = 180.0 / math.pi
    vec_type = pa.list_(pa.float32(), D)
    interests = pa.table({
        "user_id": np.repeat([t.user_id for t in truths], k).astype(np.int64),
        "interest": cat([np.arange(len(t.kind)) for t in truths]).astype(np.int64),
        "kind": pa.array(np.array(INTEREST_KINDS)[cat([t.kind for t in truths])], pa.string()),
        "weight": cat([t.weight for t in truths]).astype(np.float32),
        "category_id": cat([t.category for t in truths]).astype(np.int64),
        "target_category_id": cat([t.target_category for t in truths]).astype(np.int64),
        "drift_deg_per_year": (cat([t.drift_rate for t in truths]) * YEAR_DAYS * DAY * to_deg).astype(np.float32),
        "drift_max_deg": (cat([t.drift_max for t in truths]) * to_deg).astype(np.float32),
        "drift_start_ts": np.repeat([t.join_ts for t in truths], k).astype(np.int64),
        "period_days": cat([t.period_days for t in truths]).astype(np.float64),
        "phase_days": cat([t.phase_days for t in truths]).astype(np.float64),
        "window_days": cat([t.window_days for t in truths]).astype(np.float64),
        "vec_a": pa.FixedSizeListArray.from_arrays(cat([t.vec_a for t in truths]).astype(np.float32).ravel(), D)
        .cast(vec_type),
        "vec_b": pa.FixedSizeListArray.from_arrays(cat([t.vec_b for t in truths]).astype(np.float32).ravel(), D)
        .cast(vec_type),
    })
    return users, interests


def _user_batches(counts: np.ndarray, chunk_events: int) -> Iterator[tuple[int, int]]:
    """Consecutive user ranges ``[lo, hi)`` holding about ``chunk_events`` events each."""
    lo, acc = 0, 0
    for u, n in enumerate(counts):
        acc += int(n)
        if acc >= chunk_events:
            yield lo, u + 1
            lo, acc = u + 1, 0
    if lo < len(counts):
        yield lo, len(counts)


def synthesize(out: str | os.PathLike, *, users: int | None = None, scale: str = "default",
               seed: int | np.random.Generator = 0, max_events: int | None = None, progress: bool = True,
               config: SynthConfig | None = None, chunk_events: int = 1 << 20) -> Manifest:
    """Generate a synthetic life-cycle dataset into the folder ``out`` (atomically) and return its manifest.

    Users are generated one at a time and written in chunks of about ``chunk_events`` events, so memory
    is bounded by the largest user plus one chunk, not by the total. The output does not depend on
    ``chunk_events``.

    Args:
        out: dataset folder to create. An existing dataset folder (or an empty folder) is replaced once the
            new one is complete; a file or a non-empty folder without ``manifest.json`` is refused.
        users: number of users (overrides the scale's preset).
        scale: ``small``, ``default``, ``large`` or ``lifecycle`` (see ``SCALES``); ignored when ``config``
            is given.
        seed: an integer or a numpy Generator (converted once); same seed, same dataset.
        max_events: per-user cap; the heaviest user gets exactly this many events.
        progress: show a progress bar on stderr.
        config: a full :class:`SynthConfig` instead of a preset (``users``/``max_events`` still override).
        chunk_events: events per write (memory/speed trade-off only).
    Returns:
        The :class:`Manifest`; ``notes`` holds the seed, scale, full config, ground-truth file names,
        ``max_user_events`` and ``label_rate``.
    """
    if config is None:
        cfg = config_for_scale(scale, users=users, max_events=max_events)
    else:
        cfg = dataclasses.replace(config, **{k: v for k, v in (("num_users", users), ("max_events", max_events))
                                             if v is not None})
        cfg.validate()
        scale = "custom"
    if chunk_events < 1:
        raise ConfigError(f"synth: chunk_events={chunk_events} should be >= 1")
    check_out_dir(out)
    seed_int = _seed_int(seed)
    items = build_items(cfg, seed_int)
    counts = activity_counts(cfg, seed_int)

    item_cols = [dataclasses.replace(c, vocab_size=cfg.num_categories + 1) if c.name == "category_id" else
                 dataclasses.replace(c, vocab_size=cfg.num_authors + 1) if c.name == "author_id" else c
                 for c in ITEM_COLUMNS]
    notes = {
        "generator": "twinv2.data.synth",
        "scale": scale,
        "seed": seed_int,
        "config": dataclasses.asdict(cfg),
        "ground_truth": dict(GROUND_TRUTH_FILES),
        "ground_truth_note": "analysis only: no model may read these files",
        "max_user_events": int(counts.max()),
    }
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    clicks = 0
    with DatasetWriter(out, name=f"synth-{scale}", source="synthetic", item_columns=item_cols,
                       event_columns=EVENT_COLUMNS, notes=notes) as writer:
        writer.write_items(_items_table(items))
        gt = writer.tmp / "ground_truth"
        gt.mkdir()
        save_npy_atomic(gt / "item_latent.npy", items.latent)
        save_npy_atomic(gt / "category_centers.npy", items.category_centers.astype(np.float32))
        pq.write_table(pa.table({"item_id": np.arange(items.num_items + 1, dtype=np.int64),
                                 "popularity": items.popularity, "quality": items.quality}),
                       gt / "items.parquet")
        bar = Progress(TextColumn("synth {task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[events]:,} events"), TimeElapsedColumn(),
                       console=Console(stderr=True), disable=not progress, transient=False)
        total_events = int(counts.sum())
        prob_tmp = gt / f".{Path(GROUND_TRUTH_FILES['click_prob']).name}.partial"
        click_prob = np.lib.format.open_memmap(prob_tmp, mode="w+", dtype=np.float32, shape=(total_events,))
        with bar, pq.ParquetWriter(gt / "users.parquet", _truth_schema(cfg)[0]) as users_w, \
                pq.ParquetWriter(gt / "interests.parquet", _truth_schema(cfg)[1]) as interests_w:
            task = bar.add_task(f"{scale} users", total=cfg.num_users, events=0)
            done_events = 0
            for lo, hi in _user_batches(counts, chunk_events):
                parts, truths = [], []
                for u in range(lo, hi):
                    ev, truth = generate_user(items, cfg, seed_int, u, int(counts[u]))
                    parts.append(ev)
                    truths.append(truth)
                table = _events_table(parts)
                del parts
                clicks += int(np.count_nonzero(table.column("label").to_numpy()))
                for offset in range(0, table.num_rows, chunk_events):
                    writer.write_events(table.slice(offset, chunk_events))
                users_t, interests_t = _truth_tables(truths, cfg)
                users_w.write_table(users_t)
                interests_w.write_table(interests_t)
                # Events are written in generation order, so the probabilities align row by row.
                click_prob[done_events:done_events + table.num_rows] = np.concatenate([t.click_prob for t in truths])
                done_events += table.num_rows
                bar.update(task, advance=hi - lo, events=done_events)
        click_prob.flush()
        del click_prob
        os.replace(prob_tmp, writer.tmp / GROUND_TRUTH_FILES["click_prob"])
        writer.notes["label_rate"] = round(clicks / max(int(counts.sum()), 1), 6)
    assert writer.manifest is not None
    return writer.manifest


def _truth_schema(cfg: SynthConfig) -> tuple[pa.Schema, pa.Schema]:
    """Schemas of the ground-truth tables (fixed up front so every chunk appends to the same file)."""
    probe = UserTruth(user_id=0, num_events=0, join_ts=0, click_bias=0.0, activity_trend=0.0,
                      kind=np.zeros(1, np.int8), weight=np.ones(1), category=np.ones(1, np.int64),
                      target_category=np.zeros(1, np.int64), drift_rate=np.zeros(1), drift_max=np.zeros(1),
                      period_days=np.zeros(1), phase_days=np.zeros(1), window_days=np.zeros(1),
                      vec_a=np.zeros((1, cfg.latent_dim)), vec_b=np.zeros((1, cfg.latent_dim)),
                      extra={"max_session_shift_days": 0.0, "max_state_lag_days": 0.0})
    users, interests = _truth_tables([probe], cfg)
    return users.schema, interests.schema



def load_click_prob(dataset_dir: str | os.PathLike) -> np.ndarray:
    """The true click probability of every event of a synthetic dataset, float32 ``[E]`` aligned with events.

    Row ``r`` is the probability from which the label of row ``r`` of ``events.parquet`` was drawn (the
    sigmoid of the click logit, noise included): an oracle for analysis and ceilings, never a model input.

    Raises:
        DataValidationError: naming ``ground_truth/click_prob.npy`` when it is missing (a dataset not made by
            this generator, or by a version before it wrote the file), unreadable, not a 1-D float array of
            probabilities, or not as long as the dataset's events.
    """
    root = Path(dataset_dir)
    path = root / GROUND_TRUTH_FILES["click_prob"]
    manifest = Manifest.load(root / MANIFEST_NAME)
    if not path.is_file():
        raise DataValidationError(str(path), None, "the synthetic generator's click probabilities",
                                  "no such file (regenerate with `twinv2 data synth`)")
    try:
        prob = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataValidationError(str(path), None, "a readable .npy file", str(exc).splitlines()[0]) from exc
    if prob.ndim != 1 or prob.dtype.kind != "f":
        raise DataValidationError(str(path), None, "a 1-D float array", f"{prob.dtype} of shape {prob.shape}")
    num_rows = pq.ParquetFile(root / EVENTS_FILE).metadata.num_rows if (root / EVENTS_FILE).is_file() else None
    for what, n in (("manifest.num_events", manifest.num_events), (EVENTS_FILE, num_rows)):
        if n is not None and len(prob) != n:
            raise DataValidationError(str(path), None, f"one probability per event ({what}: {n:,})",
                                      f"{len(prob):,}")
    if prob.size and not (np.isfinite(prob).all() and prob.min() >= 0.0 and prob.max() <= 1.0):
        raise DataValidationError(str(path), None, "probabilities in [0, 1]", "values outside")
    return prob.astype(np.float32, copy=False)
