"""The item universe: authors' focus and in-category sampling."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.data.synth.conftest import TINY
from twinv2.data.store import load_dataset
from twinv2.data.synth import build_items


def test_synthesize_authors_focus_on_few_categories(tiny_dir):
    ds = load_dataset(tiny_dir)
    author, category = ds.items["author_id"][1:], ds.items["category_id"][1:]
    per_author = [len(np.unique(category[author == a])) for a in np.unique(author)]
    assert max(per_author) <= 1 + TINY.author_secondary_max
    # And the main category holds at least half of each prolific author's items (up to sampling noise).
    shares = [np.bincount(category[author == a]).max() / (author == a).sum()
              for a in np.unique(author) if (author == a).sum() >= 20]
    assert shares and min(shares) >= 0.4


@settings(max_examples=25, deadline=None)
@given(num_items=st.integers(1, 60), num_categories=st.integers(1, 12), seed=st.integers(0, 2**16),
       edge=st.sampled_from([0.0, 0.5, 1 - 2**-53]))
def test_build_items_category_sampling_stays_in_category(num_items, num_categories, seed, edge):
    cfg = dataclasses.replace(TINY, num_items=num_items, num_categories=num_categories,
                              num_authors=max(1, num_items // 3))
    items = build_items(cfg, seed)
    assert set(np.unique(items.category[1:])) == set(items.nonempty.tolist())
    cats = np.repeat(items.nonempty, 50)
    u = np.random.default_rng(seed).random(len(cats))
    u[::7] = edge
    drawn = items.sample_in_category(cats, u)
    assert (items.category[drawn] == cats).all()
    pop = items.sample_popular(u)
    assert pop.min() >= 1 and pop.max() <= num_items
