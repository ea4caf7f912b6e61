"""GRPO training with ERA from the command line: TRL's `grpo` script with `ERAGRPOConfig` and `ERAGRPOTrainer`.

Every option of TRL's script is accepted (script, `ERAGRPOConfig` including the `--era_*` options, model and
dataset-mixture arguments), from the command line or a YAML file given with `--config`:

```bash
python -m trl_era.scripts.grpo --config trl_era/scripts/era_grpo.yaml        # or: trl-era-grpo --config ...
accelerate launch --config_file <trl>/accelerate_configs/zero3.yaml -m trl_era.scripts.grpo --config era.yaml
```

TRL's own `trl grpo` command builds a `GRPOTrainer`, hence this script.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from trl import DatasetMixtureConfig, ModelConfig, TrlParser
from trl.scripts.grpo import GRPOScriptArguments

from trl_era.era_grpo_config import ERAGRPOConfig


def _reward_funcs(script_args: GRPOScriptArguments) -> list:
    """The reward model and functions named in the script arguments, resolved as TRL's script does."""
    from trl.rewards import (
        accuracy_reward,
        get_soft_overlong_punishment,
        reasoning_accuracy_reward,
        think_format_reward,
    )

    registry = {
        "accuracy_reward": accuracy_reward,
        "reasoning_accuracy_reward": reasoning_accuracy_reward,
        "think_format_reward": think_format_reward,
        "get_soft_overlong_punishment": get_soft_overlong_punishment(
            max_completion_len=1280, soft_punish_cache=256
        ),
    }
    reward_funcs = []
    if script_args.reward_model_name_or_path:
        reward_funcs.append(script_args.reward_model_name_or_path)
    for name in script_args.reward_funcs or []:
        if name in registry:
            reward_funcs.append(registry[name])
        elif "." in name:
            module_path, func_name = name.rsplit(".", 1)
            sys.path.insert(0, os.getcwd())
            reward_funcs.append(getattr(importlib.import_module(module_path), func_name))
        else:
            raise ValueError(
                f"Could not load reward function '{name}'. Expected one of {list(registry)} or a dotted import path."
            )
    return reward_funcs


def train(
    script_args: GRPOScriptArguments,
    training_args: ERAGRPOConfig,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig,
):
    """Train with `ERAGRPOTrainer`, save the model and return the trainer (TRL's `grpo` script's `main`)."""
    from accelerate.logging import get_logger
    from datasets import load_dataset
    from trl import get_dataset, get_peft_config, get_quantization_config

    from trl_era.era_grpo_trainer import ERAGRPOTrainer

    logger = get_logger(__name__)
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        model_init_kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = model_init_kwargs

    if dataset_args.datasets:
        if script_args.dataset_name:
            logger.warning("Both `datasets` and `dataset_name` are provided; `datasets` is used.")
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name:
        dataset = load_dataset(
            script_args.dataset_name, name=script_args.dataset_config, streaming=script_args.dataset_streaming
        )
    else:
        raise ValueError("Either `datasets` or `dataset_name` must be provided.")

    trainer = ERAGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=_reward_funcs(script_args),
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return trainer


def make_parser() -> TrlParser:
    """The parser of TRL's `grpo` script, with `ERAGRPOConfig` in place of `GRPOConfig`."""
    return TrlParser((GRPOScriptArguments, ERAGRPOConfig, ModelConfig, DatasetMixtureConfig))


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line (and `--config` YAML file) and train; the `trl-era-grpo` console script."""
    script_args, training_args, model_args, dataset_args = make_parser().parse_args_and_config(
        argv, fail_with_unknown_args=False
    )
    train(script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    main()
