"""The generator's parameters: :class:`SynthConfig` (every parameter of the generative model, validated),
the named presets ``SCALES`` and the time and interest-kind constants the other modules share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from twinv2.errors import ConfigError

__all__ = ["DAY", "DORMANT", "DRIFTING", "INTEREST_KINDS", "SCALES", "STABLE", "WEEK", "YEAR_DAYS", "SynthConfig",
           "config_for_scale"]

DAY = 86_400
WEEK = 7 * DAY
YEAR_DAYS = 365.25
INTEREST_KINDS = ("stable", "drifting", "dormant")
STABLE, DRIFTING, DORMANT = 0, 1, 2


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
