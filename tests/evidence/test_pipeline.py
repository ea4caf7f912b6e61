"""The evidence pipeline on a tiny protocol: launcher, resume after a kill, sharding, aggregation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks.evidence import report
from benchmarks.evidence.protocol import REPOSITORY, load_protocol
from benchmarks.evidence.run import (
    commit_checkpoints,
    parse_shard,
    results_folder,
    run_folder,
    run_status,
    shard_runs,
    zoo_run_folder,
)
from benchmarks.evidence.run import main as run_main

STEPS = 400
EVAL_FREQ = 100


@pytest.fixture
def tiny_protocol(tmp_path: Path) -> Path:
    """Pendulum, SAC vs SAC-ERA, 2 seeds, a few hundred steps."""
    conf = tmp_path / "conf"
    conf.mkdir()
    common = {"n_timesteps": STEPS, "learning_starts": 50, "batch_size": 32, "buffer_size": 1000}
    (conf / "sac.yml").write_text(yaml.safe_dump({"Pendulum-v1": {**common, "policy": "MlpPolicy"}}))
    (conf / "sac_era.yml").write_text(
        yaml.safe_dump({"Pendulum-v1": {**common, "policy": "sb3_era.ERASACPolicy", "ent_coef": 0.0}})
    )
    protocol = {
        "name": "tiny",
        "arms": {
            "sac": {"algo": "sac", "conf_file": str(conf / "sac.yml")},
            "sac_era": {"algo": "sac_era", "conf_file": str(conf / "sac_era.yml")},
        },
        "envs": ["Pendulum-v1"],
        "seeds": [0, 1],
        "n_timesteps": STEPS,
        "eval_freq": EVAL_FREQ,
        "eval_episodes": 1,
        "save_freq": 2 * EVAL_FREQ,
        "reference_scores": {"Pendulum-v1": [-1500.0, 0.0]},
    }
    path = tmp_path / "tiny.yml"
    path.write_text(yaml.safe_dump(protocol))
    return path


def test_shards_partition_the_runs(tiny_protocol: Path):
    runs = load_protocol(tiny_protocol).runs()
    shards = [shard_runs(runs, (index, 3)) for index in (1, 2, 3)]
    assert sorted(run.key for shard in shards for run in shard) == sorted(run.key for run in runs)
    assert all(shards)
    with pytest.raises(Exception, match="1 <= i <= n"):
        parse_shard("4/3")


def test_protocol_errors_name_the_problem(tiny_protocol: Path, tmp_path: Path):
    spec = yaml.safe_load(tiny_protocol.read_text())
    spec["save_freq"] = EVAL_FREQ + 1
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="multiple of eval_freq"):
        load_protocol(bad)
    with pytest.raises(ValueError, match="shipped protocols are"):
        load_protocol("no-such-protocol")


def test_shipped_protocols_load():
    for name in ("ppo_mujoco", "exploration", "exploration_discrete", "sac_hopper", "dmc", "dmc_smoke"):
        protocol = load_protocol(name)
        assert protocol.runs(), name
    # rl-zoo3 names the run folder of "dm_control/dog-run-v0" "dm_control-dog-run-v0_<id>".
    assert load_protocol("dmc").runs()[0].key == "sac/dm_control-dog-run-v0_s0"


def _run_dirs(tmp_path: Path) -> list[str]:
    return ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]


def test_launcher_shards_resume_and_report(tiny_protocol: Path, tmp_path: Path):
    protocol = load_protocol(tiny_protocol)
    runs_dir, results_dir = tmp_path / "runs", tmp_path / "results"
    # Shard 1 of 2 in one process, killed once its first run has a checkpoint.
    launcher = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.evidence.run", str(tiny_protocol), "--shard", "1/2",
         "--progress-every", "1", *_run_dirs(tmp_path)],
        cwd=REPOSITORY, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    first = shard_runs(protocol.runs(), (1, 2))[0]
    deadline = time.monotonic() + 600  # a loaded machine may take minutes to reach the first checkpoint
    while run_status(runs_dir, results_dir, first)[0] != "partial" and time.monotonic() < deadline:
        assert launcher.poll() is None, launcher.communicate()[0]
        time.sleep(0.2)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    status, killed_at = run_status(runs_dir, results_dir, first)
    assert status == "partial" and 0 < killed_at < STEPS

    # Both shards to completion: the killed run resumes from its checkpoint instead of starting over.
    assert run_main([str(tiny_protocol), "--shard", "1/2", *_run_dirs(tmp_path)]) == 0
    log = (zoo_run_folder(runs_dir, first).parents[1] / "train.log").read_text()
    assert f"from its checkpoint at {killed_at} steps" in log
    assert "Loading compressed replay buffer" in log
    assert run_main([str(tiny_protocol), "--shard", "2/2", "--workers", "2", *_run_dirs(tmp_path)]) == 0

    for run in protocol.runs():
        folder = results_folder(results_dir, run)
        with np.load(folder / "evaluations.npz") as evaluations:
            # One evaluation history, on schedule, across the kill.
            assert evaluations["timesteps"].tolist() == list(range(EVAL_FREQ, STEPS + 1, EVAL_FREQ))
        with np.load(folder / "entropy.npz") as entropy:
            assert entropy["timesteps"].tolist() == list(range(EVAL_FREQ, STEPS + 1, EVAL_FREQ))
            assert np.all(np.isfinite(entropy["gaussian_entropy"]))
            if run.arm.name == "sac_era":
                assert np.all(entropy["gaussian_entropy_min"] >= entropy["entropy_floor"] - 1e-5)
        record = json.loads((folder / "run.json").read_text())
        assert record["command"].startswith("sb3-era-zoo train --algo")
        assert not (zoo_run_folder(runs_dir, run) / "checkpoint").exists()
    # Finished runs are skipped.
    assert run_main([str(tiny_protocol), *_run_dirs(tmp_path)]) == 0

    summary = report.build_report(protocol, results_dir, tmp_path / "report", bootstrap_reps=200)
    assert set(summary["final"]) == {"sac", "sac_era"}
    for arm in ("sac", "sac_era"):
        estimate = summary["final"][arm]["Pendulum-v1"]
        assert estimate["n_runs"] == 2
        assert estimate["ci_low"] <= estimate["iqm"] <= estimate["ci_high"]
    improvement = summary["probability_of_improvement"]["sac_era"]
    assert 0.0 <= improvement["ci_low"] <= improvement["estimate"] <= improvement["ci_high"] <= 1.0
    for name in ("final_scores.png", "learning_curves.png", "entropy.png", "report.md", "report.json"):
        assert (tmp_path / "report" / name).is_file(), name


def _git(repository: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repository), *args], capture_output=True, text=True, check=True
    ).stdout


def test_commit_checkpoints_tracks_the_unfinished_runs_and_untracks_the_finished_ones(
    tiny_protocol: Path, tmp_path: Path
):
    repository = tmp_path / "repository"
    repository.mkdir()
    _git(repository, "init", "-q")
    _git(repository, "config", "user.email", "evidence@example.com")
    _git(repository, "config", "user.name", "evidence")
    (repository / ".gitignore").write_text("runs/\n")
    _git(repository, "add", ".gitignore")
    _git(repository, "commit", "-q", "-m", "start")
    protocol = load_protocol(tiny_protocol)
    runs_dir, results_dir = repository / "runs", repository / "results"
    partial, finished = protocol.runs()[:2]

    folder = zoo_run_folder(runs_dir, partial)
    (folder / "checkpoint").mkdir(parents=True)
    state = {"num_timesteps": 2 * EVAL_FREQ, "total_timesteps": STEPS, "finished": False}
    (folder / "checkpoint" / "state.json").write_text(json.dumps(state))
    kept = ["checkpoint/model.zip", "checkpoint/replay_buffer.pkl.gz", "evaluations.npz", "0.monitor.csv"]
    for name in [*kept, "best_model.zip"]:
        (folder / name).write_bytes(b"data")
    (run_folder(runs_dir, partial) / "tensorboard").mkdir()
    (run_folder(runs_dir, partial) / "tensorboard" / "events.out").write_bytes(b"data")
    # A finished run whose checkpoint an earlier call committed.
    finished_folder = zoo_run_folder(runs_dir, finished)
    (finished_folder / "checkpoint").mkdir(parents=True)
    (finished_folder / "checkpoint" / "model.zip").write_bytes(b"data")
    _git(repository, "add", "-f", str(finished_folder))
    _git(repository, "commit", "-q", "-m", "earlier checkpoint")
    results_folder(results_dir, finished).mkdir(parents=True)
    (results_folder(results_dir, finished) / "run.json").write_text("{}")

    assert commit_checkpoints(protocol, protocol.runs(), runs_dir, results_dir) == 1
    prefix = folder.relative_to(repository).as_posix()
    expected = {".gitignore", f"{prefix}/checkpoint/state.json", *(f"{prefix}/{name}" for name in kept)}
    assert set(_git(repository, "ls-files").split()) == expected
    assert f"{partial.key} at {2 * EVAL_FREQ}" in _git(repository, "log", "-1", "--format=%s")

    # Nothing new: no commit. Other staged changes: refused, nothing committed.
    head = _git(repository, "rev-parse", "HEAD")
    assert commit_checkpoints(protocol, protocol.runs(), runs_dir, results_dir) == 0
    (repository / "notes.txt").write_text("staged")
    _git(repository, "add", "notes.txt")
    with pytest.raises(SystemExit, match="staged changes"):
        commit_checkpoints(protocol, protocol.runs(), runs_dir, results_dir)
    assert _git(repository, "rev-parse", "HEAD") == head

    # Once the run finishes, its files leave the index.
    _git(repository, "reset", "-q")
    results_folder(results_dir, partial).mkdir(parents=True)
    (results_folder(results_dir, partial) / "run.json").write_text("{}")
    assert commit_checkpoints(protocol, protocol.runs(), runs_dir, results_dir) == 0
    assert set(_git(repository, "ls-files").split()) == {".gitignore"}
    assert "untrack the checkpoints of finished runs" in _git(repository, "log", "-1", "--format=%s")
