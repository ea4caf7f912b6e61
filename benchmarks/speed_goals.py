"""Issue 9's speed goals against the committed measurements: ERA's ratio to its host library, before and now.

Reads the committed result files of ``benchmarks/sb3_throughput.py`` and ``benchmarks/trl_step.py`` named in
:data:`GOALS` and renders one Markdown table (each goal, the ratio measured before issue 9 where a file holds
one, the latest committed ratio, whether it meets the goal) and the commands that rewrite those files. The
table lives in README.md between the ``speed-goals`` snippet markers (the results page includes it);
``tests/docs/test_speed_goals.py`` fails when it differs from what this script renders, so a new measurement
reaches the README by rerunning this script, not by hand::

    PYTHONPATH=. python benchmarks/speed_goals.py            # print the table
    PYTHONPATH=. python benchmarks/speed_goals.py --write    # rewrite README.md's copy
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

from benchmarks.sb3_throughput import auto_clock, build_parser

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "benchmarks" / "results"
README = REPOSITORY / "README.md"
TRL_BASELINE = "grpo"  # trl_step's mode that the ERA modes' ratios are taken against
START, END = "<!-- --8<-- [start:speed-goals] -->", "<!-- --8<-- [end:speed-goals] -->"


@dataclass(frozen=True)
class Goal:
    """One row of issue 9's table.

    :param path: what is compared, as the issue names it.
    :param at_least: the goal is ``ratio >= goal`` (throughput), else ``ratio <= goal`` (time or memory).
    :param goal: the goal's ratio.
    :param now: the result files of the latest measurement (several: one run each).
    :param key: the row in those files: an ``sb3_throughput`` model name, or a ``trl_step`` mode and its
        ratio (``"era-half:time_ratio"``); ``"*:peak_ratio"`` takes the largest over the ERA modes.
    :param before: the file measured before issue 9's work, if one was committed.
    :param predates: a commit that changed the measured code after the ``now`` files were measured: the row shows
        them as the last measurement of the code before it, and no verdict until the new code is measured.
    """

    path: str
    at_least: bool
    goal: float
    now: tuple[str, ...]
    key: str
    before: str | None = None
    predates: str | None = None


# TRL's loss step as of 9bf1128 (ERA's rescaled rows folded by TRL's own kernel at c / T).
TRL_CPU_RUNS = tuple(f"trl_step-small-cpu-9bf1128{run}.json" for run in ("", "-run2"))

# SAC's gradient step did not change after 707074b (ab228fb, be077c1 and 188c60d refactored it): the runs of
# every commit since.
SAC_GRADIENT_STEP_RUNS = (
    *(
        f"sb3_throughput-cpu-quiet-sac-fine-{commit}-301{run}.json"
        for commit in ("707074b", "fe83cdc")
        for run in ("", "-run2")
    ),
    "sb3_throughput-cpu-quiet-sac-fine-e9a6333-301.json",
    "sb3_throughput-cpu-quiet-sac-fine-2a96358-301.json",
)
# PPO-ERA's code did not change after 35095f0: its runs and those of later commits.
PPO_RUNS = (
    *(
        f"sb3_throughput-cpu-quiet-ppo-35095f0-61{run}.json"
        for run in ("", "-run2", "-run3", "-run4", "-run5")
    ),
    *(f"sb3_throughput-cpu-quiet-ppo-2a96358-61{run}.json" for run in ("", "-run2")),
)
GOALS = (
    Goal(
        "SAC-ERA, truncated normal: gradient steps/s vs SAC (`auto`), CPU",
        True,
        0.98,
        SAC_GRADIENT_STEP_RUNS,
        "SAC-ERA (truncated)",
        "sb3_throughput_h200-cpu.json",
    ),
    Goal(
        "SAC-ERA, tanh: gradient steps/s vs SAC (`auto`), CPU",
        True,
        0.98,
        SAC_GRADIENT_STEP_RUNS,
        "SAC-ERA (tanh)",
        "sb3_throughput_h200-cpu.json",
    ),
    Goal(
        "SAC-ERA, truncated: whole `learn()` env steps/s vs SAC on Hopper-v5, CPU",
        True,
        0.98,
        (
            "sb3_throughput-cpu-quiet-sac-learn-2786316.json",
            "sb3_throughput-cpu-quiet-sac-learn-8b5dd92.json",
            "sb3_throughput-cpu-quiet-sac-learn-2a96358.json",
        ),
        "SAC-ERA learn() (truncated)",
    ),
    Goal(
        "PPO-ERA, truncated normal: `learn()` env steps/s vs PPO, CPU",
        True,
        0.95,
        PPO_RUNS,
        "PPO-ERA (truncated)",
        "sb3_throughput_h200-cpu.json",
    ),
    Goal(
        "PPO-ERA, tanh: `learn()` env steps/s vs PPO, CPU",
        True,
        0.95,
        # Its code did not change after d4e0e62 (be077c1 only moved a decision into a helper): both CPUs' runs.
        (
            *(f"sb3_throughput-cpu-quiet-ppo-d4e0e62-61{run}.json" for run in ("", "-run2")),
            *(f"sb3_throughput-cpu-quiet-ppo-fe83cdc-61{run}.json" for run in ("", "-run2", "-run3")),
            "sb3_throughput-cpu-quiet-ppo-b605fab-61.json",
            *PPO_RUNS,
        ),
        "PPO-ERA (tanh)",
        "sb3_throughput_h200-cpu.json",
    ),
    Goal(
        "SAC-ERA, truncated normal: gradient steps/s vs SAC (`auto`), CUDA (H200)",
        True,
        0.95,
        ("sb3_throughput_h200-cuda-e753914.json",),
        "SAC-ERA (truncated)",
        "sb3_throughput_h200-cuda.json",
        predates="6f576ad",  # rsample through the one-pass formula, on torch on a GPU
    ),
    Goal(
        "TRL ERA, half the responses rescaled: loss-step time vs `GRPOTrainer`, CPU",
        False,
        1.05,
        TRL_CPU_RUNS,
        "era-half:time_ratio",
        "trl_step-small-cpu-e7802e5.json",
    ),
    Goal(
        "TRL ERA, half the responses rescaled: loss-step time vs `GRPOTrainer`, CUDA (H200)",
        False,
        1.05,
        ("trl_step-qwen2-0.5b-cuda-1024-row-runs.json",),
        "era-half:time_ratio",
        "trl_step-qwen2-0.5b-cuda.json",
        predates="9bf1128",
    ),
    Goal(
        "TRL ERA: peak memory vs `GRPOTrainer` (largest over the modes), CPU",
        False,
        1.02,
        TRL_CPU_RUNS,
        "*:peak_ratio",
        "trl_step-small-cpu-e7802e5.json",
    ),
    Goal(
        "TRL ERA: peak memory vs `GRPOTrainer` (largest over the modes), CUDA (H200)",
        False,
        1.02,
        ("trl_step-qwen2-0.5b-cuda-1024-row-runs.json",),
        "*:peak_ratio",
        "trl_step-qwen2-0.5b-cuda.json",
        predates="9bf1128",
    ),
)


@functools.cache
def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def ratios(name: str, key: str) -> tuple[float, ...]:
    """The ratios a result file holds for ``key``: ``(ratio of medians, median paired ratio)`` for an
    ``sb3_throughput`` model (the second only where the file records it), ``(ratio,)`` for a ``trl_step`` mode.
    """
    record = _load(name)
    if "command" in record:  # trl_step
        mode, _, field = key.partition(":")
        values = [
            row[field]
            for row in record["results"]
            if mode in ("*", row["mode"]) and row["mode"] != TRL_BASELINE
        ]
        if not values:
            raise KeyError(f"{name} has no mode {mode!r}")
        return (max(values),)
    for row in record["results"]:
        if row["model"] == key:
            paired = row.get("paired_ratio_median")
            return (row["ratio_vs_baseline"],) if paired is None else (row["ratio_vs_baseline"], paired)
    raise KeyError(f"{name} has no model {key!r}")


def command(name: str) -> str:
    """The command that rewrites result file ``name``: its recorded options (those away from the defaults) and
    ``--out`` the file itself."""
    record = _load(name)
    out = f"benchmarks/results/{name}"
    if "command" in record:  # trl_step records its command line
        words = shlex.split(record["command"])
        if "--out" in words:
            del words[words.index("--out") : words.index("--out") + 2]
        return f"PYTHONPATH=. {shlex.join(words)} --out {out}"
    defaults = vars(build_parser().parse_args([]))
    config = dict(record["config"])
    if config.get("clock") == auto_clock(config.get("device", "cpu")):
        config["clock"] = "auto"
    words = ["python", "benchmarks/sb3_throughput.py"]
    for option, value in config.items():
        if option == "out" or value == defaults.get(option):
            continue
        words += [f"--{option.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return f"PYTHONPATH=. {shlex.join(words)} --out {out}"


def _decisive(value: float, goal: float) -> str:
    """``value`` to 3 decimals, or to 4 where 3 would round it onto the goal and hide which side it is on."""
    return f"{value:.4f}" if f"{value:.3f}" == f"{goal:.3f}" else f"{value:.3f}"


def render() -> str:
    """The table and its commands, as Markdown."""
    lines = [
        "| issue 9's path: ratio ERA / baseline, interleaved in one run | goal | before issue 9 "
        "| now: ratio of medians / median paired | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    files: list[str] = []
    for goal in GOALS:
        now = [ratios(name, goal.key) for name in goal.now]
        met = all(
            (value >= goal.goal) if goal.at_least else (value <= goal.goal) for run in now for value in run
        )
        before = "not measured" if goal.before is None else f"{ratios(goal.before, goal.key)[0]:.3f}"
        now_text = "; ".join(" / ".join(_decisive(value, goal.goal) for value in run) for run in now)
        verdict = "yes" if met else "**no**"
        if goal.predates is not None:
            now_text += f" (the code before {goal.predates})"
            verdict = f"not measured since {goal.predates}"
        sign = ">=" if goal.at_least else "<="
        lines.append(f"| {goal.path} | {sign} {goal.goal:.2f} | {before} | {now_text} | {verdict} |")
        files += [name for name in (goal.before, *goal.now) if name is not None and name not in files]
    note = (
        "A throughput ratio above 1 means ERA runs faster than its host; a time or memory ratio above 1, that it "
        "costs more. \"before issue 9\": measured on the H200 host's CPU and GPU (SB3) and on this project's "
        '2-core machine (TRL on the CPU); "now": the latest committed measurement, one value or pair per run, '
        "and the earlier runs, on any CPU, of code that has not changed since (ratios differ from one CPU to "
        "another, which the result files name, and between runs by a few percent); "
        '"met": every value of every run on the goal\'s side ("not measured since" a commit: its code changed after '
        "its last runs, whose values the row shows). The commands that rewrite the files (then "
        "`PYTHONPATH=. python benchmarks/speed_goals.py --write` rewrites this table):"
    )
    lines += [
        "",
        *textwrap.wrap(note, width=110, break_on_hyphens=False),
        "",
        '```bash skip="benchmarks: minutes to an hour each; the CUDA ones need a GPU"',
        *(command(name) for name in files),
        "```",
    ]
    return "\n".join(lines) + "\n"


def _block(text: str) -> re.Match:
    match = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), text, re.DOTALL)
    if match is None:
        raise ValueError(f"README.md has no {START} ... {END} block")
    return match


def readme_block(text: str) -> str:
    """What README.md holds between the ``speed-goals`` markers."""
    return _block(text).group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite README.md's copy of the table")
    args = parser.parse_args()
    table = render()
    print(table, end="")
    if args.write:
        text = README.read_text()
        start, end = _block(text).span(1)
        README.write_text(text[:start] + table + text[end:])
        print(f"wrote {README}")


if __name__ == "__main__":
    main()
