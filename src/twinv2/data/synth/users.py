"""Users: how many events each one has, and each one's ground truth — life span, propensities and
interests (stable, drifting, dormant) with their state over time (docs/synthetic.md, "Users")."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from twinv2.data.synth._sampling import STREAM_ACTIVITY, as_seed_int, rng_stream, unit_rows
from twinv2.data.synth.config import DAY, DORMANT, DRIFTING, STABLE, YEAR_DAYS, SynthConfig
from twinv2.data.synth.items import ItemUniverse

__all__ = ["UserTruth", "activity_counts", "dormant_active", "draw_user", "interest_state"]


def activity_counts(config: SynthConfig, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Events per user, int64 ``[U]``.

    ``n_u = clip(round(exp(ln(events_median) + events_sigma * z_u)), min_events, max_events)``; the user
    with the largest draw is then pinned at exactly ``max_events`` so that every scale holds one ultra-long
    life cycle whatever the seed. Draws come in user order from one stream, so a prefix of users keeps its
    counts when more users are generated (only the pinned user may change).
    """
    rng = rng_stream(as_seed_int(seed), STREAM_ACTIVITY)
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


def draw_user(rng: np.random.Generator, items: ItemUniverse, cfg: SynthConfig, user_id: int,
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
    vec_a = unit_rows(items.category_centers[category]
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


def interest_state(truth: UserTruth, ts: np.ndarray, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Mixture weights ``pi`` and drift angles ``theta`` at times ``ts``: float64 ``[n, K]`` each."""
    t = ts[:, None]
    theta = np.minimum(truth.drift_max, truth.drift_rate * np.maximum(t - truth.join_ts, 0.0))
    active = dormant_active(truth.period_days, truth.phase_days, truth.window_days, t, cfg.start_ts)
    mult = np.where(truth.kind == DORMANT, np.where(active, cfg.dormant_boost, 0.0), 1.0)
    w = truth.weight * mult
    # The first interest is always stable, so every row has positive mass.
    return w / w.sum(axis=1, keepdims=True), theta
