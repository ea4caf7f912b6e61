"""`python -m trl_era.scripts.grpo`: TRL's grpo script with ERA, in process and as a 2-process DDP (gloo) run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trl_era.scripts.grpo import main

REWARD_MODULE = """
def count_reward(completions, **kwargs):
    return [float(completion.count("3")) + 0.1 * len(completion) for completion in completions]
"""


def write_run_files(directory: Path, model_dir: str, **config) -> Path:
    """A local prompt file, a reward module and a YAML config as a user of the script writes them."""
    with open(directory / "prompts.jsonl", "w") as file:
        for i in range(16):
            file.write(json.dumps({"prompt": " ".join(f"w{(5 * i + j) % 45}" for j in range(4))}) + "\n")
    (directory / "local_rewards.py").write_text(REWARD_MODULE)
    run_config = {
        "model_name_or_path": model_dir,
        "datasets": [{"path": "json", "data_files": str(directory / "prompts.jsonl"), "split": "train"}],
        "reward_funcs": ["local_rewards.count_reward"],
        "output_dir": str(directory / "out"),
        "per_device_train_batch_size": 4,
        "num_generations": 4,
        "max_completion_length": 6,
        "max_steps": 2,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "era_lb": 0.5,
        "era_ub": 3.0,
        **config,
    }
    path = directory / "era.yaml"
    path.write_text(yaml.safe_dump(run_config))
    return path


def test_script_trains_and_saves_from_a_yaml_config(tmp_path, model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the script imports dotted reward paths from the working directory
    config = write_run_files(tmp_path, model_dir)
    main(["--config", str(config), "--era_k", "3.0"])
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_two_process_ddp_launch(tmp_path, model_dir):
    # Two processes of 2 prompts each make one group of num_generations=4: the config is only valid with both.
    config = write_run_files(tmp_path, model_dir, per_device_train_batch_size=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["-m", "trl_era.scripts.grpo", "--config", str(config)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'era/frac_above_ub': '1'" in result.stdout + result.stderr  # entropy ~5.7 > era_ub=3
    assert (tmp_path / "out" / "model.safetensors").exists()


pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
