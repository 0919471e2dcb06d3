"""Synthetic life cycles: items, heavy-tailed user activity and multi-kind interests over years.

No public dataset holds life cycles of 10^4-10^6 behaviors per user, so the default dataset is generated.
The generative model is stated in ``docs/synthetic.md`` (formulas, every parameter and its default); this
package implements exactly that model. In short:

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

Modules, each readable top to bottom: ``config`` (:class:`SynthConfig`, the ``SCALES`` presets),
``items`` (the item universe), ``users`` (activity counts, each user's interests and their state over
time), ``events`` (one user's sessions, exposures, clicks and play times), ``truth`` (the ground-truth
files and :func:`load_click_prob`), ``writer`` (:func:`synthesize`, streaming users into a dataset folder);
``_sampling`` holds the seed streams and small sampling helpers they share. This package re-exports the
public names.

Example:
    >>> from twinv2.data.synth import synthesize
    >>> manifest = synthesize("data/synth-small", scale="small", seed=0)  # doctest: +SKIP
    >>> manifest.notes["max_user_events"]  # doctest: +SKIP
    3000
"""

from twinv2.data.synth.config import INTEREST_KINDS, SCALES, SynthConfig, config_for_scale
from twinv2.data.synth.events import generate_user
from twinv2.data.synth.items import ItemUniverse, build_items
from twinv2.data.synth.truth import GROUND_TRUTH_FILES, load_click_prob
from twinv2.data.synth.users import UserTruth, activity_counts, dormant_active
from twinv2.data.synth.writer import EVENT_COLUMNS, ITEM_COLUMNS, synthesize

__all__ = [
    "EVENT_COLUMNS",
    "GROUND_TRUTH_FILES",
    "INTEREST_KINDS",
    "ITEM_COLUMNS",
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
