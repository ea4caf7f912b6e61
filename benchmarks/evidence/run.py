"""
Run an evidence protocol: every (arm, environment, seed) as an ``sb3-era-zoo train`` process.

    python -m benchmarks.evidence.run ppo_mujoco --workers 2
    python -m benchmarks.evidence.run ppo_mujoco --shard 3/8      # one job of an 8-job array
    python -m benchmarks.evidence.run ppo_mujoco --list           # what is done, partial, pending
    python -m benchmarks.evidence.run ppo_mujoco --commit-checkpoints  # so that another machine resumes

Runs execute ``--workers`` at a time, one thread each (``OMP_NUM_THREADS=1``, ``--num-threads 1``), in
``<runs dir>/<protocol>/<arm>/<env>_s<seed>/`` (rl-zoo3's log folder of that run). A finished run is
skipped; a killed one resumes from its last checkpoint (``sb3-era-zoo train --resume``). When a run
finishes, its small result files (``evaluations.npz``, ``entropy.npz``, monitor files, the rl-zoo3
config, ``run.json`` with the command and versions) are copied to
``benchmarks/evidence/results/<protocol>/<arm>/<env>_s<seed>/`` (rl-zoo3's layout: its ``all_plots``
reads it), its checkpoint is deleted, and with ``--commit`` the results are committed to git. Shards of
the same protocol, run anywhere, merge by copying their results folders together. A progress line per
active run every ``--progress-every`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.evidence.protocol import REPOSITORY, RESULTS, Protocol, Run, load_protocol
from sb3_era.versions import package_versions
from sb3_era.zoo_resume import CHECKPOINT_FOLDER, read_checkpoint_state

RESULT_FILES = ("evaluations.npz", "entropy.npz")
VERSIONED_PACKAGES = ("era-rl", "stable-baselines3", "sb3-contrib", "rl_zoo3", "torch", "gymnasium", "mujoco")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (1-based) -> ``(i, n)``, checked."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n, e.g. 2/8, got {text!r}") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"--shard i/n needs 1 <= i <= n, got {text!r}")
    return index, count


def shard_runs(runs: list[Run], shard: tuple[int, int]) -> list[Run]:
    """The runs of shard ``i`` of ``n``: every ``n``-th run, starting at the ``i``-th."""
    index, count = shard
    return runs[index - 1 :: count]


def run_folder(runs_dir: Path, run: Run) -> Path:
    return runs_dir / run.protocol / run.key


def zoo_run_folder(runs_dir: Path, run: Run) -> Path:
    """The rl-zoo3 run folder inside a run's log folder (one run per log folder, so always id 1)."""
    return run_folder(runs_dir, run) / run.arm.algo / f"{run.env_name}_1"


def results_folder(results_dir: Path, run: Run) -> Path:
    return results_dir / run.protocol / run.key


def is_finished(results_dir: Path, run: Run) -> bool:
    """A run is finished when its results were collected (``run.json`` is written last)."""
    return (results_folder(results_dir, run) / "run.json").is_file()


def run_status(runs_dir: Path, results_dir: Path, run: Run) -> tuple[str, int]:
    """``("done" | "partial" | "pending", steps checkpointed)``."""
    if is_finished(results_dir, run):
        return "done", -1
    state = read_checkpoint_state(zoo_run_folder(runs_dir, run))
    if state is None:
        return "pending", 0
    return "partial", state["num_timesteps"]


def _git_commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(REPOSITORY), "describe", "--always", "--dirty", "--abbrev=40"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def collect(protocol: Protocol, run: Run, runs_dir: Path, results_dir: Path, info: dict) -> Path:
    """Copy a finished run's small result files to the results folder; delete its checkpoint.

    :return: the run's results folder.
    """
    source = zoo_run_folder(runs_dir, run)
    target = results_folder(results_dir, run)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in RESULT_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    for monitor in sorted(source.glob("*monitor.csv")):
        shutil.copy2(monitor, target / monitor.name)
    for name in ("config.yml", "args.yml"):
        config = source / run.env_name / name
        if config.is_file():
            shutil.copy2(config, target / name)
    record = {
        "protocol": protocol.name,
        "arm": run.arm.name,
        "algo": run.arm.algo,
        "env": run.env,
        "seed": run.seed,
        "n_timesteps": protocol.n_timesteps,
        **info,
        "git_commit": _git_commit(),
        "versions": package_versions(VERSIONED_PACKAGES),
        "platform": platform.platform(),
    }
    # Written last: its presence marks the run as finished.
    (target / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(source / CHECKPOINT_FOLDER, ignore_errors=True)
    return target


def commit_results(folder: Path, message: str, attempts: int = 5) -> bool:
    """``git add`` + ``git commit`` of one results folder only (other staged or changed files untouched)."""
    for attempt in range(attempts):
        added = subprocess.run(["git", "-C", str(folder), "add", "--", "."], capture_output=True, text=True)
        committed = subprocess.run(
            ["git", "-C", str(folder), "commit", "-q", "-m", message, "--", "."],
            capture_output=True,
            text=True,
        )
        if added.returncode == 0 and committed.returncode == 0:
            return True
        # Another git command holds the index lock: wait and retry.
        time.sleep(2.0 * (attempt + 1))
    print(f"could not commit {folder}: {committed.stderr.strip()}", file=sys.stderr, flush=True)
    return False


def _git(repository: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repository), *args], capture_output=True, text=True, check=False)


def commit_checkpoints(protocol: Protocol, runs: list[Run], runs_dir: Path, results_dir: Path) -> int:
    """Commit what another machine needs to resume the unfinished runs; untrack it for the finished ones.

    For every partial run, its rl-zoo3 run folder is force-added (``runs/`` is git-ignored): the checkpoint
    (model, compressed replay buffer, normalisation statistics, ``state.json``), the evaluation and entropy
    histories, monitor files and config; not the best model nor TensorBoard files. A finished run's files are
    removed from the index (its results are committed apart). Run it with the training processes paused or
    stopped, so that no file is caught mid-write. Refuses when other changes are staged.

    :return: the number of partial runs whose files were committed.
    """
    repository = Path(_git(runs_dir, "rev-parse", "--show-toplevel").stdout.strip() or REPOSITORY)
    if _git(repository, "diff", "--cached", "--quiet").returncode != 0:
        raise SystemExit(
            f"--commit-checkpoints: {repository} has staged changes; commit or unstage them first"
        )
    partial = []
    for run in runs:
        status, step = run_status(runs_dir, results_dir, run)
        folder = zoo_run_folder(runs_dir, run)
        if status == "partial":
            files = [
                path
                for path in folder.rglob("*")
                if path.is_file() and path.name != "best_model.zip" and not path.name.startswith(".")
            ]
            # The index then holds exactly the files there now (a monitor file set aside by a resume is gone).
            _git(repository, "rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", str(folder))
            added = _git(repository, "add", "-f", "--", *map(str, files))
            if added.returncode != 0:
                _git(repository, "reset", "-q", "--", str(runs_dir))  # leave the index as it was
                raise SystemExit(f"could not add {folder}: {added.stderr.strip()}")
            partial.append(f"{run.key} at {step}")
        elif status == "done" and _git(repository, "ls-files", "--", str(folder)).stdout:
            _git(repository, "rm", "-r", "-q", "--cached", "--", str(folder))
    if _git(repository, "diff", "--cached", "--quiet").returncode == 0:
        print(f"[{protocol.name}] no checkpoint to commit", flush=True)
        return 0
    message = (
        f"evidence: {protocol.name} resume checkpoints of unfinished runs ({', '.join(partial)})"
        if partial
        else f"evidence: {protocol.name} untrack the checkpoints of finished runs"
    )
    committed = _git(repository, "commit", "-q", "-m", message)
    if committed.returncode != 0:
        raise SystemExit(f"could not commit the checkpoints: {committed.stderr.strip()}")
    print(f"[{protocol.name}] {message}", flush=True)
    return len(partial)


@dataclass
class _Active:
    run: Run
    process: subprocess.Popen
    log: Path
    started: float
    start_step: int
    last_line: str = field(default="")


def _progress_line(protocol: Protocol, active: _Active, runs_dir: Path) -> str:
    evaluations = zoo_run_folder(runs_dir, active.run) / "evaluations.npz"
    step, last_return = active.start_step, float("nan")
    if evaluations.is_file():
        try:
            with np.load(evaluations) as saved:
                if len(saved["timesteps"]):
                    step = int(saved["timesteps"][-1])
                    last_return = float(np.mean(saved["results"][-1]))
        except (OSError, ValueError, EOFError):
            pass  # being written right now
    elapsed = time.monotonic() - active.started
    rate = (step - active.start_step) / elapsed if elapsed > 0 else 0.0
    eta = (protocol.n_timesteps - step) / rate / 60 if rate > 0 else float("nan")
    return (
        f"[{protocol.name}] {active.run.arm.name} {active.run.env} seed {active.run.seed}: "
        f"{step}/{protocol.n_timesteps} steps ({100 * step / protocol.n_timesteps:.0f}%), "
        f"last eval {last_return:.1f}, {rate:.0f} steps/s, ETA {eta:.0f} min"
    )


def launch(
    protocol: Protocol,
    runs: list[Run],
    runs_dir: Path,
    results_dir: Path,
    workers: int,
    commit: bool,
    progress_every: float,
) -> int:
    """Run the unfinished ``runs``, ``workers`` at a time. :return: the number of failed runs."""
    pending = [run for run in runs if not is_finished(results_dir, run)]
    print(
        f"[{protocol.name}] {len(runs) - len(pending)} of {len(runs)} runs done, {len(pending)} to run "
        f"with {workers} workers",
        flush=True,
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    active: list[_Active] = []
    try:
        return _launch_loop(
            protocol, pending, runs_dir, results_dir, workers, commit, progress_every, environment, active
        )
    finally:
        # Interrupted (Ctrl-C, SIGTERM from a job scheduler): stop the runs; each resumes from its checkpoint.
        for entry in active:
            entry.process.terminate()
        for entry in active:
            entry.process.wait()


def _launch_loop(
    protocol: Protocol,
    pending: list[Run],
    runs_dir: Path,
    results_dir: Path,
    workers: int,
    commit: bool,
    progress_every: float,
    environment: dict[str, str],
    active: list[_Active],
) -> int:
    failures = 0
    last_progress = time.monotonic()
    while pending or active:
        while pending and len(active) < workers:
            run = pending.pop(0)
            folder = run_folder(runs_dir, run)
            folder.mkdir(parents=True, exist_ok=True)
            command = protocol.command(run, folder)
            status, step = run_status(runs_dir, results_dir, run)
            log = folder / "train.log"
            print(
                f"[{protocol.name}] start {run.key}"
                + (f" (resuming at {step} steps)" if status == "partial" else "")
                + f": {' '.join(command)}",
                flush=True,
            )
            with log.open("a") as log_file:
                # `sb3-era-zoo` through this interpreter, whatever the PATH finds first.
                process = subprocess.Popen(
                    [sys.executable, "-m", "sb3_era.zoo", *command[1:]],
                    cwd=REPOSITORY,
                    env=environment,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            active.append(_Active(run, process, log, time.monotonic(), step))
        time.sleep(1.0)
        for entry in list(active):
            code = entry.process.poll()
            if code is None:
                continue
            active.remove(entry)
            state = read_checkpoint_state(zoo_run_folder(runs_dir, entry.run))
            if code != 0 or state is None or not state["finished"]:
                failures += 1
                print(
                    f"[{protocol.name}] FAILED {entry.run.key} (exit code {code}); see {entry.log}",
                    flush=True,
                )
                continue
            # The command as run from the repository root (the log folder does not change the results).
            log_folder = Path(os.path.relpath(run_folder(runs_dir, entry.run), REPOSITORY))
            command = protocol.command(entry.run, log_folder)
            target = collect(
                protocol,
                entry.run,
                runs_dir,
                results_dir,
                {"command": " ".join(command), "wall_seconds_last_session": time.monotonic() - entry.started},
            )
            print(f"[{protocol.name}] done {entry.run.key} -> {target}", flush=True)
            if commit:
                commit_results(
                    target,
                    f"evidence: {protocol.name} {entry.run.key} ({protocol.n_timesteps} steps) results",
                )
        if active and time.monotonic() - last_progress >= progress_every:
            last_progress = time.monotonic()
            for entry in active:
                print(_progress_line(protocol, entry, runs_dir), flush=True)
    return failures


def list_runs(protocol: Protocol, runs: list[Run], runs_dir: Path, results_dir: Path) -> None:
    for run in runs:
        status, step = run_status(runs_dir, results_dir, run)
        detail = f" at {step} steps" if status == "partial" else ""
        print(f"{status:8s} {run.key}{detail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("protocol", help="protocol name (benchmarks/evidence/protocols/<name>.yml) or file")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time, one thread each (default 1)")
    parser.add_argument(
        "--shard", type=parse_shard, default=(1, 1), help="run shard i of n (1-based), e.g. 2/8"
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/evidence"), help="where runs log")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where finished runs' results go")
    parser.add_argument("--commit", action="store_true", help="git-commit each finished run's results")
    parser.add_argument("--list", action="store_true", help="print each run's status and exit")
    parser.add_argument(
        "--commit-checkpoints",
        action="store_true",
        help="git-commit the unfinished runs' checkpoints (another machine resumes them) and exit; "
        "pause the runs first",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    parser.add_argument("--progress-every", type=float, default=60.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    protocol = load_protocol(args.protocol)
    runs = shard_runs(protocol.runs(), args.shard)
    runs_dir, results_dir = args.runs_dir.resolve(), args.results_dir.resolve()
    if args.list:
        list_runs(protocol, runs, runs_dir, results_dir)
        return 0
    if args.commit_checkpoints:
        commit_checkpoints(protocol, runs, runs_dir, results_dir)
        return 0
    if args.dry_run:
        for run in runs:
            print(" ".join(protocol.command(run, run_folder(args.runs_dir, run))))
        return 0
    failures = launch(protocol, runs, runs_dir, results_dir, args.workers, args.commit, args.progress_every)
    return 1 if failures else 0


if __name__ == "__main__":
    # A job scheduler's SIGTERM stops the runs like Ctrl-C does (they resume from their checkpoints).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    raise SystemExit(main())
