"""ERAGRPOConfig: the spec's defaults, documented fields, validation at construction, TrlParser support."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from trl import DatasetMixtureConfig, ModelConfig, TrlParser
from trl.scripts.grpo import GRPOScriptArguments

from trl_era import ERAGRPOConfig

ERA_FIELDS = {
    "era_lb": 0.45,
    "era_ub": 3.0,
    "era_k": 2.0,
    "era_top_fraction": 0.2,
    "era_topk_logits": None,
    "era_adv_scale": False,
    "era_adv_threshold": 0.0,
}
EXAMPLE_CONFIG = Path(__file__).parents[2] / "trl_era" / "scripts" / "era_grpo.yaml"


def test_defaults_are_the_authors_and_every_field_is_documented(config_kwargs):
    config = ERAGRPOConfig(**config_kwargs)
    fields = {f.name: f for f in dataclasses.fields(ERAGRPOConfig)}
    for name, default in ERA_FIELDS.items():
        assert getattr(config, name) == default
        assert fields[name].metadata["help"]
        assert f"{name} (`" in ERAGRPOConfig.__doc__


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(era_lb=-0.1), "need 0 <= lb < ub"),
        (dict(era_lb=3.0, era_ub=3.0), "need 0 <= lb < ub"),
        (dict(era_ub=float("inf")), "need 0 <= lb < ub"),
        (dict(era_k=1.0), "k must be a finite number > 1"),
        (dict(era_top_fraction=0.0), r"top_fraction must be in \(0, 1\]"),
        (dict(era_top_fraction=1.5), r"top_fraction must be in \(0, 1\]"),
        (dict(era_topk_logits=0), "era_topk_logits must be None or an integer >= 1"),
        (dict(era_adv_threshold=float("nan")), "era_adv_threshold must be a finite number"),
        (dict(era_adv_threshold=-0.5), "era_adv_threshold must be a finite number >= 0"),
        (dict(num_iterations=2), "ERA needs on-policy training"),
        (dict(steps_per_generation=2), "ERA needs on-policy training"),
        (dict(gradient_accumulation_steps=4, steps_per_generation=3, num_generations=2), "on-policy"),
    ],
)
def test_bad_configurations_are_rejected(config_kwargs, overrides, message):
    with pytest.raises(ValueError, match=message):
        ERAGRPOConfig(**{**config_kwargs, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        dict(
            gradient_accumulation_steps=4, steps_per_generation=2
        ),  # two generations within one optimizer step
        dict(gradient_accumulation_steps=2, num_iterations=2, steps_per_generation=1),  # same weights twice
    ],
)
def test_on_policy_generation_schedules_are_accepted(config_kwargs, overrides):
    ERAGRPOConfig(**{**config_kwargs, **overrides})


def test_example_yaml_and_command_line_parse_into_era_config(tmp_path):
    parser = TrlParser((GRPOScriptArguments, ERAGRPOConfig, ModelConfig, DatasetMixtureConfig))
    _, config, model_args, dataset_args = parser.parse_args_and_config(
        [
            "--config",
            str(EXAMPLE_CONFIG),
            "--era_lb",
            "0.3",
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
        ]
    )
    assert isinstance(config, ERAGRPOConfig)
    assert (config.era_lb, config.era_ub, config.era_k, config.era_topk_logits) == (0.3, 3.0, 2.0, 20)
    assert model_args.model_name_or_path and dataset_args.datasets
