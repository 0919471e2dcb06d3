"""One user's events: pages and sessions, their times, the exposures and the clicks and play times they
produce (docs/synthetic.md, "Sessions, pages and timestamps", "Exposures", "Clicks and play time").

:func:`generate_user` is the entry point; the helpers above it are in the order it uses them.
"""

from __future__ import annotations

import math

import numpy as np

from twinv2.data.synth._sampling import STREAM_USER, as_seed_int, rng_stream
from twinv2.data.synth.config import DAY, WEEK, SynthConfig
from twinv2.data.synth.items import ItemUniverse
from twinv2.data.synth.users import UserTruth, draw_user, interest_state

__all__ = ["generate_user"]

# Rows of the latent-vector product computed at once: bounds memory for a user with 10^6 events.
_AFFINITY_BLOCK = 1 << 16
# Fixed-point passes that align the interest state with the final session times (see generate_user).
_MAX_TIMING_PASSES = 4
_TIMING_TOLERANCE_SECONDS = 3600.0


def _cut(sizes: np.ndarray, total: int) -> np.ndarray:
    """The shortest prefix of positive ``sizes`` summing to ``total``, the last entry trimmed."""
    cs = np.cumsum(sizes)
    n = int(np.searchsorted(cs, total, side="left")) + 1
    sizes = sizes[:n].copy()
    sizes[-1] -= int(cs[n - 1]) - total
    return sizes


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


def _policy_categories(items: ItemUniverse, cfg: SynthConfig, truth: UserTruth, interest: np.ndarray,
                       ts: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Categories the recommender picks for interests ``interest`` at times ``ts`` (int64 ``[n]``).

    The policy sees each interest's direction once a week (recommenders lag): ``P(k) ~ exp(T <u_j(w), c_k>)``
    over non-empty categories. Only the (interest, week) rows that occur are evaluated, and each distinct
    (interest, direction) once: an interest that does not drift has the same distribution every week.
    """
    C = cfg.num_categories
    weeks = math.ceil(cfg.horizon_days / 7)
    week = np.clip(((ts - cfg.start_ts) // WEEK).astype(np.int64), 0, weeks - 1)
    rows, inv = np.unique(interest * weeks + week, return_inverse=True)
    j, w = rows // weeks, rows % weeks
    t_mid = cfg.start_ts + (w + 0.5) * WEEK
    theta = np.minimum(truth.drift_max[j], truth.drift_rate[j] * np.maximum(t_mid - truth.join_ts, 0.0))
    distinct, row_of = np.unique(np.stack([j.astype(np.float64), theta], axis=1), axis=0, return_inverse=True)
    dj, dtheta = distinct[:, 0].astype(np.int64), distinct[:, 1]  # [R'] with R' <= R rows
    cos_a = truth.vec_a @ items.category_centers.T  # [K, C + 1]
    cos_b = truth.vec_b @ items.category_centers.T
    logits = cfg.rec_temperature * (np.cos(dtheta)[:, None] * cos_a[dj] + np.sin(dtheta)[:, None] * cos_b[dj])
    logits[:, items.category_size == 0] = -np.inf  # includes the unknown code 0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)  # [R', C + 1]
    cdf /= cdf[:, -1:]
    cdf[:, -1] = 1.0
    # Row r of the search table is its distribution's CDF shifted by r: one searchsorted serves every row.
    flat = (cdf[row_of.reshape(-1)] + np.arange(len(rows))[:, None]).ravel()
    pos = np.searchsorted(flat, inv + u, side="right")
    pos = np.minimum(pos, (inv + 1) * (C + 1) - 1)
    return (pos - inv * (C + 1)).astype(np.int64)


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
    pi_s, theta_s = interest_state(truth, session_time, cfg)  # [S, K] each

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


def generate_user(items: ItemUniverse, config: SynthConfig, seed: int | np.random.Generator, user_id: int,
                  num_events: int) -> tuple[dict[str, np.ndarray], UserTruth]:
    """Generate one user's life cycle from its own stream ``(seed, user_id)``.

    Returns the events (columns of ``EVENT_COLUMNS``, each ``[num_events]``, sorted by ``ts`` with ties
    within a page) and the user's ground truth, including each event's true click probability
    (``truth.click_prob``, aligned with the events). The result depends only on ``(items, config, seed,
    user_id, num_events)``.
    """
    cfg = config
    rng = rng_stream(as_seed_int(seed), STREAM_USER, int(user_id))
    truth = draw_user(rng, items, cfg, int(user_id), int(num_events))
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
