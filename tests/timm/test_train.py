"""The training CLI (timm_era.train) on scikit-learn digits: baseline vs ERA, resume, DDP, bad flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import timm_era
from timm_era import train

FAST = [
    "--dataset",
    "digits",
    "--img-size",
    "16",
    "--batch-size",
    "64",
    "--no-progress",
    "--checkpoint-hist",
    "1",
]


def _run(tmp_path, *flags: str) -> dict:
    return train.main([*FAST, "--output", str(tmp_path), *flags])


def test_era_run_trains_reports_metrics_and_keeps_the_floor(tmp_path) -> None:
    results = _run(tmp_path, "--model", "resnet10t_era", "--min-entropy", "0.8", "--epochs", "1",
                   "--experiment", "era", "--model-ema", "--mixup", "0.2")  # fmt: skip
    assert results["min_entropy"] == 0.8 and results["num_classes"] == 10
    metrics = results["eval"]
    assert set(metrics) == {"top1", "top5", "nll", "ece", "entropy_mean", "entropy_min", "count"}
    assert metrics["count"] == 359  # the 20% digits test split, each image once
    assert metrics["top1"] > 20.0  # above chance (10%) after one epoch
    assert metrics["entropy_min"] >= 0.8 and results["eval_ema"]["entropy_min"] >= 0.8
    run_dir = tmp_path / "era"
    assert json.loads((run_dir / "results.json").read_text())["eval"] == metrics
    assert (run_dir / "last.pth.tar").is_file() and (run_dir / "summary.csv").is_file()


def test_resume_continues_from_the_saved_epoch(tmp_path) -> None:
    first = _run(tmp_path, "--model", "resnet10t_era", "--epochs", "1", "--experiment", "first")
    assert [row["epoch"] for row in first["history"]] == [0]
    resumed = _run(tmp_path, "--model", "resnet10t_era", "--epochs", "2", "--experiment", "resumed",
                   "--resume", str(tmp_path / "first" / "last.pth.tar"))  # fmt: skip
    assert [row["epoch"] for row in resumed["history"]] == [1]
    assert resumed["min_entropy"] == pytest.approx(0.6)  # the 10-class default


def test_baseline_run_has_no_floor(tmp_path) -> None:
    results = _run(
        tmp_path, "--model", "resnet10t", "--epochs", "1", "--smoothing", "0", "--experiment", "plain"
    )
    assert results["min_entropy"] is None and results["eval"]["count"] == 359


def test_era_flags_on_a_plain_model_are_refused(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        _run(tmp_path, "--model", "resnet10t", "--min-entropy", "0.6")
    assert "need an ERA model (e.g. resnet10t_era)" in capsys.readouterr().err


def test_infeasible_floor_fails_before_training(tmp_path) -> None:
    with pytest.raises(ValueError, match="feasible interval"):
        _run(tmp_path, "--model", "resnet10t_era", "--min-entropy", "3.0")


def test_torchrun_ddp_on_cpu_with_gloo(tmp_path) -> None:
    # The interpreter's own torchrun, so that it runs wherever the package is installed (no PATH needed).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "timm_era.train", *FAST,
               "--model", "resnet10t_era", "--epochs", "1", "--device", "cpu", "--output", str(tmp_path),
               "--experiment", "ddp"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(command, check=True, env=env, capture_output=True, text=True, timeout=600)
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["world_size"] == 2
    assert results["eval"]["count"] == 359  # the two shards together: every test image exactly once
    assert results["eval"]["entropy_min"] >= 0.6


def test_image_folder_dataset_goes_through_timm_loaders(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for label in ("cat", "dog", "fox"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for index in range(2):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                    folder / f"{index}.png"
                )
    results = train.main(["--dataset", str(tmp_path / "images"), "--model", "resnet10t_era", "--img-size", "16",
                          "--epochs", "1", "--batch-size", "2", "--workers", "0", "--no-progress",
                          "--output", str(tmp_path / "runs"), "--experiment", "folder"])  # fmt: skip
    assert results["num_classes"] == 3 and results["eval"]["count"] == 6
    assert results["min_entropy"] == pytest.approx(timm_era.default_min_entropy(3))
