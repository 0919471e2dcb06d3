"""Session fixtures for the serving tests: one tiny dataset, its compressed folder, twin and twinv2 checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve.serve_testing import make_compressed, make_dataset, save_model


@pytest.fixture(scope="session")
def serve_data(tmp_path_factory) -> dict[str, Path]:
    """Paths: ``dataset``, ``compressed``, ``twin`` and ``twinv2`` checkpoints (read-only for tests)."""
    root = tmp_path_factory.mktemp("serve")
    dataset = make_dataset(root / "data")
    compressed = make_compressed(root / "data", root / "compressed")
    return {"dataset": root / "data", "compressed": compressed,
            "twinv2": save_model(dataset, "twinv2", root / "twinv2.pt", compressed),
            "twin": save_model(dataset, "twin", root / "twin.pt", None)}
