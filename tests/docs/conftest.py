"""Fixtures for running the documentation's code blocks (``tests/docs/test_code_blocks.py``).

``docs_budget`` caps every Stable-Baselines3 / sb3-contrib training that a code block starts: ``learn(N)`` trains
for ``min(N, ERA_DOCS_MAX_TIMESTEPS)`` steps (default 128), so an example that stops working fails the suite in
seconds while the page shows the real budget. Set ``ERA_DOCS_MAX_TIMESTEPS`` to run the examples longer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Above SAC's default learning_starts (100), so that the capped runs take gradient steps too.
DEFAULT_MAX_TIMESTEPS = 128


def max_timesteps() -> int:
    """The step budget of one ``learn()`` call in a code block: ``ERA_DOCS_MAX_TIMESTEPS`` or 128."""
    value = os.environ.get("ERA_DOCS_MAX_TIMESTEPS", str(DEFAULT_MAX_TIMESTEPS))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"ERA_DOCS_MAX_TIMESTEPS must be a positive integer, got {value!r}")
    return int(value)


@pytest.fixture
def docs_budget(monkeypatch: pytest.MonkeyPatch) -> int:
    """Cap ``total_timesteps`` of every SB3 ``learn()`` (all algorithms set up their run through
    ``BaseAlgorithm._setup_learn``, whose returned step count is the one their loop trains for)."""
    from stable_baselines3.common.base_class import BaseAlgorithm

    cap = max_timesteps()
    setup_learn = BaseAlgorithm._setup_learn

    def capped_setup_learn(self, total_timesteps: int, *args, **kwargs):
        return setup_learn(self, min(total_timesteps, cap), *args, **kwargs)

    monkeypatch.setattr(BaseAlgorithm, "_setup_learn", capped_setup_learn)
    return cap


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run a Python block in a fresh directory, so that files it writes (logs, ``out/``) stay out of the repo."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
