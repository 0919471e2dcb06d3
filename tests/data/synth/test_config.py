"""SynthConfig validation, the scale presets, and the parameter table in docs/synthetic.md."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from twinv2.data.store import load_dataset
from twinv2.data.synth import GROUND_TRUTH_FILES, SCALES, SynthConfig, load_click_prob, synthesize
from twinv2.errors import ConfigError


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": "huge"}, "scale='huge'"),
        ({"users": 0}, "num_users=0"),
        ({"max_events": 5}, "max_events=5 should be >= min_events"),
        ({"seed": -1}, "seed=-1"),
        ({"config": SynthConfig(p_popular=0.8, p_explore=0.5)}, "p_popular \\+ p_explore"),
    ],
)
def test_synthesize_rejects_bad_parameters_and_writes_nothing(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        synthesize(tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_lifecycle_scale_is_default_with_documented_changes_only(tmp_path):
    changed = {f.name for f in dataclasses.fields(SynthConfig)
               if getattr(SCALES["lifecycle"], f.name) != getattr(SCALES["default"], f.name)}
    assert SCALES["default"] == SynthConfig()
    doc = (Path(__file__).resolve().parents[3] / "docs" / "synthetic.md").read_text()
    section = " ".join(doc.split("## The `lifecycle` regime", 1)[1].split("\n## ", 1)[0].split())
    assert changed
    for name in changed:
        found = re.search(rf"`{name}` ([0-9.]+)", section)
        assert found and float(found.group(1)) == getattr(SCALES["lifecycle"], name), name
    # A few of its users generate and pass the data contract.
    m = synthesize(tmp_path / "lc", scale="lifecycle", users=3, max_events=1500, seed=0, progress=False)
    assert m.notes["scale"] == "lifecycle" and m.num_events == len(load_click_prob(tmp_path / "lc"))
    assert load_dataset(tmp_path / "lc").histories.lengths().min() >= SCALES["lifecycle"].min_events


def test_docs_list_every_parameter_with_its_default():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "synthetic.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line.split("|")[2].strip()
            for line in doc.splitlines() if line.startswith("| `")}
    for f in dataclasses.fields(SynthConfig):
        assert f.name in rows, f.name
        assert float(rows[f.name].replace("−", "-")) == float(f.default), f.name
    for rel in GROUND_TRUTH_FILES.values():
        assert rel in doc
