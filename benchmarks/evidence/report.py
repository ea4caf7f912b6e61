"""
Aggregate an evidence protocol's committed results with rliable: tables, JSON and plots.

    python -m benchmarks.evidence.report ppo_mujoco

Reads ``benchmarks/evidence/results/<protocol>/<arm>/<env>_s<seed>/evaluations.npz`` (and ``entropy.npz``),
and writes to ``benchmarks/evidence/results/<protocol>/report/``:

- ``report.json`` and ``report.md``: per task and arm, the IQM and mean of the final scores (the mean return
  of the last evaluation's episodes) with 95% stratified-bootstrap confidence intervals; the same over all
  tasks on normalised scores (the protocol's reference scores); the probability that each arm improves on the
  baseline, with its interval; how many runs each number rests on.
- ``final_scores.png`` (interval estimates), ``learning_curves.png`` (IQM over tasks and per task, with 95%
  bands), ``probability_of_improvement.png`` and ``entropy.png`` (the policy's Gaussian entropy, or a
  categorical policy's entropy, over training, per task and arm, seeds' mean and range, with the ERA floor).

Only finished runs count; an incomplete protocol is reported as such (``runs`` against ``planned``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rl_zoo3.utils import EnvironmentName
from rliable import library as rly
from rliable import metrics, plot_utils

from benchmarks.evidence.protocol import RESULTS, Protocol, load_protocol

CONFIDENCE = 0.95


def _load_runs(protocol: Protocol, results_dir: Path, arm: str, env: str) -> dict[int, dict[str, np.ndarray]]:
    """Finished runs of one arm on one task: seed -> evaluation timesteps, per-evaluation mean return, entropy."""
    runs = {}
    for seed in protocol.seeds:
        folder = results_dir / protocol.name / arm / f"{EnvironmentName(env)}_s{seed}"
        if not (folder / "run.json").is_file():
            continue
        with np.load(folder / "evaluations.npz") as evaluations:
            run = {"timesteps": evaluations["timesteps"], "returns": evaluations["results"].mean(axis=1)}
        if (folder / "entropy.npz").is_file():
            with np.load(folder / "entropy.npz") as entropy:
                run["entropy"] = {key: entropy[key] for key in entropy.files}
        runs[seed] = run
    return runs


def _interval(
    scores: dict[str, np.ndarray], aggregate: Any, reps: int
) -> dict[str, tuple[float, float, float]]:
    """rliable's point estimate and stratified-bootstrap interval of ``aggregate`` for each entry."""
    points, intervals = rly.get_interval_estimates(
        scores, aggregate, reps=reps, confidence_interval_size=CONFIDENCE
    )
    return {
        name: (float(np.ravel(points[name])[0]), float(intervals[name][0, 0]), float(intervals[name][1, 0]))
        for name in scores
    }


def _normalise(protocol: Protocol, env: str, scores: np.ndarray) -> np.ndarray:
    low, high = protocol.reference_scores[env]
    return (scores - low) / (high - low)


def build_report(
    protocol: Protocol, results_dir: Path = RESULTS, out_dir: Path | None = None, bootstrap_reps: int = 20000
) -> dict[str, Any]:
    """Compute the protocol's statistics from its finished runs; write JSON, Markdown and plots.

    :param protocol: the protocol.
    :param results_dir: the results root (holding ``<protocol>/<arm>/<env>_s<seed>``).
    :param out_dir: where to write; default ``<results_dir>/<protocol>/report``.
    :param bootstrap_reps: bootstrap resamples for each interval.
    :return: the statistics written to ``report.json``.
    """
    out_dir = out_dir or results_dir / protocol.name / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    arms = [arm.name for arm in protocol.arms]
    runs = {arm: {env: _load_runs(protocol, results_dir, arm, env) for env in protocol.envs} for arm in arms}
    summary: dict[str, Any] = {
        "protocol": protocol.name,
        "planned_runs_per_arm_and_task": len(protocol.seeds),
        "n_timesteps": protocol.n_timesteps,
        "final": {},
        "aggregate": {},
        "probability_of_improvement": {},
    }
    for arm in arms:
        summary["final"][arm] = {}
        for env in protocol.envs:
            finals = np.array([run["returns"][-1] for run in runs[arm][env].values()])
            entry: dict[str, Any] = {"n_runs": len(finals), "seeds": sorted(runs[arm][env])}
            if len(finals):
                iqm = _interval({arm: finals[:, None]}, metrics.aggregate_iqm, bootstrap_reps)[arm]
                mean = _interval({arm: finals[:, None]}, metrics.aggregate_mean, bootstrap_reps)[arm]
                entry |= {"iqm": iqm[0], "ci_low": iqm[1], "ci_high": iqm[2], "mean": mean[0]}
                entry |= {"mean_ci_low": mean[1], "mean_ci_high": mean[2], "scores": finals.tolist()}
            summary["final"][arm][env] = entry

    # Across tasks: normalised final scores of the seeds each arm finished on every task.
    normalised = {}
    for arm in arms:
        seeds = sorted(set.intersection(*(set(runs[arm][env]) for env in protocol.envs)))
        if seeds and all(env in protocol.reference_scores for env in protocol.envs):
            normalised[arm] = np.array(
                [
                    [_normalise(protocol, env, runs[arm][env][seed]["returns"][-1]) for env in protocol.envs]
                    for seed in seeds
                ]
            )
    if normalised:
        for name, aggregate in (("iqm", metrics.aggregate_iqm), ("mean", metrics.aggregate_mean)):
            for arm, (point, low, high) in _interval(normalised, aggregate, bootstrap_reps).items():
                summary["aggregate"].setdefault(arm, {"n_runs_per_task": len(normalised[arm])})
                summary["aggregate"][arm] |= {name: point, f"{name}_ci_low": low, f"{name}_ci_high": high}

    # Probability of improvement over the baseline, on the tasks where both arms have finished runs.
    for arm in arms:
        if arm == protocol.baseline:
            continue
        tasks = [env for env in protocol.envs if runs[arm][env] and runs[protocol.baseline][env]]
        if not tasks:
            continue
        counts = min(min(len(runs[arm][env]), len(runs[protocol.baseline][env])) for env in tasks)
        # Runs are independent across tasks: the i-th finished run of each task forms row i.
        pairs = tuple(
            np.array(
                [
                    [sorted(runs[name][env].items())[i][1]["returns"][-1] for env in tasks]
                    for i in range(counts)
                ]
            )
            for name in (arm, protocol.baseline)
        )
        point, low, high = _interval({arm: pairs}, metrics.probability_of_improvement, bootstrap_reps)[arm]
        summary["probability_of_improvement"][arm] = {
            "over": protocol.baseline,
            "tasks": tasks,
            "runs_per_task": counts,
            "estimate": point,
            "ci_low": low,
            "ci_high": high,
        }

    _plot_final_scores(summary, protocol, out_dir)
    _plot_learning_curves(protocol, runs, out_dir, bootstrap_reps)
    _plot_probability_of_improvement(summary, out_dir)
    _plot_entropy(protocol, runs, out_dir)
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "report.md").write_text(markdown_table(summary, protocol))
    return summary


def _cell(point: float, low: float, high: float) -> str:
    return f"{point:.1f} [{low:.1f}, {high:.1f}]"


def markdown_table(summary: dict[str, Any], protocol: Protocol) -> str:
    """The report's tables in Markdown (per task and arm; aggregate; probability of improvement)."""
    planned = summary["planned_runs_per_arm_and_task"]
    lines = [
        f"Final score (mean return of the last evaluation, {protocol.eval_episodes} episodes) after "
        f"{protocol.n_timesteps:,} steps: IQM and mean over seeds, 95% stratified-bootstrap CIs.",
        "",
        "| task | arm | runs | IQM [95% CI] | mean [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for env in protocol.envs:
        for arm, per_env in summary["final"].items():
            entry = per_env[env]
            if not entry["n_runs"]:
                lines.append(f"| {env} | {arm} | 0 of {planned} | - | - |")
                continue
            lines.append(
                f"| {env} | {arm} | {entry['n_runs']} of {planned} | {_cell(entry['iqm'], entry['ci_low'], entry['ci_high'])} "
                f"| {_cell(entry['mean'], entry['mean_ci_low'], entry['mean_ci_high'])} |"
            )
    if summary["aggregate"]:
        lines += ["", "All tasks, normalised scores (0 = random policy, 1 = reference score):", ""]
        lines += ["| arm | runs per task | IQM [95% CI] | mean [95% CI] |", "|---|---|---|---|"]
        for arm, entry in summary["aggregate"].items():
            lines.append(
                f"| {arm} | {entry['n_runs_per_task']} | {entry['iqm']:.3f} [{entry['iqm_ci_low']:.3f}, "
                f"{entry['iqm_ci_high']:.3f}] | {entry['mean']:.3f} [{entry['mean_ci_low']:.3f}, {entry['mean_ci_high']:.3f}] |"
            )
    for arm, entry in summary["probability_of_improvement"].items():
        lines += [
            "",
            f"P({arm} > {entry['over']}) = {entry['estimate']:.2f} [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}] "
            f"over {', '.join(entry['tasks'])} ({entry['runs_per_task']} runs per task and arm).",
        ]
    return "\n".join(lines) + "\n"


def _plot_final_scores(summary: dict[str, Any], protocol: Protocol, out_dir: Path) -> None:
    arms = list(summary["final"])
    panels = [env for env in protocol.envs if any(summary["final"][arm][env]["n_runs"] for arm in arms)]
    figure, axes = plt.subplots(
        1,
        len(panels) + bool(summary["aggregate"]),
        figsize=(max(3.2 * (len(panels) + 1), 6.5), 2.6),
        squeeze=False,
    )
    for axis, env in zip(axes[0], panels, strict=False):
        for row, arm in enumerate(arms):
            entry = summary["final"][arm][env]
            if entry["n_runs"]:
                axis.errorbar(
                    entry["iqm"],
                    row,
                    xerr=[[entry["iqm"] - entry["ci_low"]], [entry["ci_high"] - entry["iqm"]]],
                    fmt="o",
                    capsize=4,
                )
        axis.set_yticks(range(len(arms)), arms)
        axis.set_title(f"{env}: IQM", fontsize=9)
    if summary["aggregate"]:
        axis = axes[0][-1]
        for row, arm in enumerate(arms):
            entry = summary["aggregate"].get(arm)
            if entry:
                axis.errorbar(
                    entry["iqm"],
                    row,
                    xerr=[[entry["iqm"] - entry["iqm_ci_low"]], [entry["iqm_ci_high"] - entry["iqm"]]],
                    fmt="o",
                    capsize=4,
                )
        axis.set_yticks(range(len(arms)), arms)
        axis.set_title("all tasks: normalised IQM", fontsize=9)
    figure.suptitle(f"{protocol.name}: final scores, 95% CIs", fontsize=10)
    figure.tight_layout()
    figure.savefig(out_dir / "final_scores.png", dpi=120)
    plt.close(figure)


def _iqm_per_evaluation(scores: np.ndarray) -> np.ndarray:
    """IQM over runs and tasks at each evaluation of ``(runs, tasks, evaluations)`` scores."""
    return np.array([metrics.aggregate_iqm(scores[..., i]) for i in range(scores.shape[-1])])


def _curves(runs: dict[int, dict[str, Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Timesteps and the (runs, evaluations) returns of the runs that share the longest common schedule."""
    if not runs:
        return None
    length = min(len(run["timesteps"]) for run in runs.values())
    timesteps = next(iter(runs.values()))["timesteps"][:length]
    return timesteps, np.array([run["returns"][:length] for run in runs.values()])


def _plot_learning_curves(protocol: Protocol, runs: dict[str, Any], out_dir: Path, reps: int) -> None:
    """IQM learning curves with 95% bands: over all tasks (normalised, when reference scores are given), per task."""
    normalised = all(env in protocol.reference_scores for env in protocol.envs) and len(protocol.envs) > 1
    panels = len(protocol.envs) + normalised
    figure, axes = plt.subplots(1, panels, figsize=(max(3.4 * panels, 6.5), 2.8), squeeze=False)
    task_axes = axes[0][1:] if normalised else axes[0]
    for arm, per_env in runs.items():
        per_task = {env: _curves(per_env[env]) for env in protocol.envs}
        for axis, env in zip(task_axes, protocol.envs, strict=True):
            if per_task[env] is None:
                continue
            timesteps, returns = per_task[env]
            points, intervals = rly.get_interval_estimates(
                {arm: returns[:, None, :]}, _iqm_per_evaluation, reps=max(reps // 10, 200)
            )
            axis.plot(timesteps, points[arm], label=arm)
            axis.fill_between(timesteps, intervals[arm][0], intervals[arm][1], alpha=0.25)
            axis.set_title(f"{env} ({len(returns)} runs)", fontsize=9)
            axis.set_xlabel("steps")
        complete = [per_task[env] for env in protocol.envs]
        if normalised and all(curve is not None for curve in complete):
            count = min(len(curve[1]) for curve in complete)
            length = min(len(curve[0]) for curve in complete)
            scores = np.stack(
                [
                    _normalise(protocol, env, curve[1][:count, :length])
                    for env, curve in zip(protocol.envs, complete, strict=True)
                ],
                axis=1,
            )
            points, intervals = rly.get_interval_estimates(
                {arm: scores}, _iqm_per_evaluation, reps=max(reps // 10, 200)
            )
            axes[0][0].plot(complete[0][0][:length], points[arm], label=arm)
            axes[0][0].fill_between(complete[0][0][:length], intervals[arm][0], intervals[arm][1], alpha=0.25)
    if normalised:
        axes[0][0].set_title("IQM over tasks (normalised)", fontsize=9)
        axes[0][0].set_xlabel("steps")
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"{protocol.name}: evaluation return, IQM with 95% CIs", fontsize=10)
    figure.tight_layout()
    figure.savefig(out_dir / "learning_curves.png", dpi=120)
    plt.close(figure)


def _plot_probability_of_improvement(summary: dict[str, Any], out_dir: Path) -> None:
    entries = summary["probability_of_improvement"]
    if not entries:
        return
    pairs = {f"{arm},{entry['over']}": entry for arm, entry in entries.items()}
    points = {pair: entry["estimate"] for pair, entry in pairs.items()}
    intervals = {pair: np.array([[entry["ci_low"]], [entry["ci_high"]]]) for pair, entry in pairs.items()}
    axis = plot_utils.plot_probability_of_improvement(points, intervals, figsize=(4, 0.6 + 0.6 * len(pairs)))
    axis.figure.tight_layout()
    axis.figure.savefig(out_dir / "probability_of_improvement.png", dpi=120)
    plt.close(axis.figure)


def _plot_entropy(protocol: Protocol, runs: dict[str, Any], out_dir: Path) -> None:
    figure, axes = plt.subplots(
        1, len(protocol.envs), figsize=(max(3.4 * len(protocol.envs), 6.5), 2.8), squeeze=False
    )
    for axis, env in zip(axes[0], protocol.envs, strict=True):
        for arm, per_env in runs.items():
            traces = [run["entropy"] for run in per_env[env].values() if "entropy" in run]
            if not traces:
                continue
            length = min(len(trace["timesteps"]) for trace in traces)
            timesteps = traces[0]["timesteps"][:length]
            # The Gaussian entropy (continuous actions: what the floor binds), else the categorical policy's.
            key = "gaussian_entropy" if "gaussian_entropy" in traces[0] else "policy_entropy"
            values = np.array([trace[key][:length] for trace in traces])
            (line,) = axis.plot(timesteps, values.mean(axis=0), label=f"{arm} {key.split('_')[0]}")
            axis.fill_between(
                timesteps, values.min(axis=0), values.max(axis=0), alpha=0.2, color=line.get_color()
            )
            if "entropy_floor" in traces[0]:
                axis.plot(
                    timesteps,
                    traces[0]["entropy_floor"][:length],
                    "--",
                    color=line.get_color(),
                    label=f"{arm} floor",
                )
        axis.set_title(env, fontsize=9)
        axis.set_xlabel("steps")
        axis.set_ylabel("nats")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"{protocol.name}: policy entropy on recent states (seeds' mean and range)", fontsize=10)
    figure.tight_layout()
    figure.savefig(out_dir / "entropy.png", dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("protocol", help="protocol name (benchmarks/evidence/protocols/<name>.yml) or file")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--bootstrap-reps", type=int, default=20000)
    args = parser.parse_args(argv)
    protocol = load_protocol(args.protocol)
    summary = build_report(protocol, args.results_dir.resolve(), bootstrap_reps=args.bootstrap_reps)
    print(markdown_table(summary, protocol))


if __name__ == "__main__":
    main()
