"""The committed evidence reports and their readings describe every committed run, and only those."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from benchmarks.evidence.protocol import REPOSITORY, RESULTS, load_protocol
from benchmarks.evidence.run import is_finished, results_folder

COMMITTED = ("ppo_mujoco", "exploration", "exploration_discrete", "sac_hopper", "dmc_smoke")
# Protocols whose section of the evidence page reads its results (the smoke run is not a result).
READ = ("ppo_mujoco", "exploration", "exploration_discrete", "sac_hopper")


def _report(name: str) -> dict:
    """The committed ``report.json`` of a protocol."""
    return json.loads((RESULTS / name / "report" / "report.json").read_text())


def _finished_seeds(name: str) -> dict[tuple[str, str], list[int]]:
    """(arm, env) -> the seeds whose results are committed (a finished run writes ``run.json`` last)."""
    finished: dict[tuple[str, str], list[int]] = {}
    for run in load_protocol(name).runs():
        seeds = finished.setdefault((run.arm.name, run.env), [])
        if is_finished(RESULTS, run):
            seeds.append(run.seed)
    return finished


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_report_holds_every_committed_run(name: str):
    """Regenerate with ``python -m benchmarks.evidence.report <name>`` when this fails."""
    summary = _report(name)
    protocol = load_protocol(name)
    for (arm, env), seeds in _finished_seeds(name).items():
        entry = summary["final"][arm][env]
        assert entry["seeds"] == sorted(seeds), (arm, env)
        finals = []
        for seed in sorted(seeds):
            run = next(r for r in protocol.runs() if (r.arm.name, r.env, r.seed) == (arm, env, seed))
            with np.load(results_folder(RESULTS, run) / "evaluations.npz") as evaluations:
                finals.append(evaluations["results"][-1].mean())
        np.testing.assert_allclose(entry.get("scores", []), finals, err_msg=f"{arm} {env}")


@pytest.mark.parametrize("name", READ)
def test_evidence_page_reading_counts_the_reported_runs(name: str):
    """The reading below each included report says how many runs it read: "N of M runs" or "all N runs"; the
    README's headline gives the count of an unfinished protocol too."""
    page = (REPOSITORY / "docs" / "evidence.md").read_text()
    include = f'--8<-- "benchmarks/evidence/results/{name}/report/report.md"'
    assert page.count(include) == 1
    section = page.split(include)[1].split("\n### ")[0]
    finished = sum(len(seeds) for seeds in _finished_seeds(name).values())
    planned = len(load_protocol(name).runs())
    partial = re.search(r"(\d+) of (\d+) runs", section)
    complete = re.search(r"all (\d+) runs", section)
    assert partial or complete, f"the reading of {name} does not say how many runs it read"
    if complete and finished == planned:
        assert int(complete.group(1)) == planned
    else:
        assert partial, f"{name}: {finished} of {planned} runs are committed; the reading calls it complete"
        assert (int(partial.group(1)), int(partial.group(2))) == (finished, planned)
    if finished < planned:
        assert f"{finished} of {planned}" in (REPOSITORY / "README.md").read_text(), f"README: {name}'s count"


# The texts that quote the reports' numbers; a number as they write it.
QUOTING = ("README.md", "docs/evidence.md")
NUMBER = r"-?\d+(?:\.\d+)?"
# A quoted estimate and its interval, "4412 [3374, 5006]" or "0.42 [0.33,\n0.58]" (a reading may wrap).
QUOTED_INTERVAL = re.compile(rf"({NUMBER})\s+\[({NUMBER}),\s+({NUMBER})\]")


def _reported_intervals() -> list[tuple[float, float, float]]:
    """Every (estimate, low, high) of every committed report: IQMs, means and probabilities of improvement."""
    names = (("iqm", "ci_low", "ci_high"), ("iqm", "iqm_ci_low", "iqm_ci_high"))
    names += (("mean", "mean_ci_low", "mean_ci_high"), ("estimate", "ci_low", "ci_high"))
    found: list[tuple[float, float, float]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            found.extend(tuple(node[k] for k in keys) for keys in names if all(k in node for k in keys))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for name in COMMITTED:
        walk(_report(name))
    return found


def _rounds_to(value: float, quoted: str) -> bool:
    decimals = len(quoted.partition(".")[2])
    return abs(value - float(quoted)) <= 0.5 * 10.0**-decimals + 1e-9


def test_quoted_intervals_are_in_the_committed_reports():
    """Every "estimate [low, high]" in the evidence page and the README is one of a committed report's, as
    rounded there: a regenerated report whose numbers moved fails here until the text follows."""
    reported = _reported_intervals()
    for where in QUOTING:
        text = (REPOSITORY / where).read_text()
        quotes = QUOTED_INTERVAL.findall(text)
        assert quotes, f"{where} quotes no interval"
        for quote in quotes:
            assert any(
                all(_rounds_to(v, q) for v, q in zip(triple, quote, strict=True)) for triple in reported
            ), f"{where}: {quote[0]} [{quote[1]}, {quote[2]}] is in no committed report"


# A list of numbers as a reading writes it, "3040, 4044, 4235, 4956 and 5031" (it may wrap).
QUOTED_LIST = re.compile(rf"{NUMBER}(?:,\s+{NUMBER})+,?\s+and\s+{NUMBER}")


def test_quoted_per_seed_scores_are_in_the_committed_reports():
    """A list of as many numbers as a reported arm has runs is that arm's per-seed final scores, in seed order,
    as rounded there (shorter lists, such as peaks of a few seeds, are not checked)."""
    reported = [
        entry["scores"]
        for name in COMMITTED
        for envs in _report(name)["final"].values()
        for entry in envs.values()
    ]
    lengths = {len(scores) for scores in reported}
    checked = 0
    for where in QUOTING:
        for match in QUOTED_LIST.finditer((REPOSITORY / where).read_text()):
            quoted = re.findall(NUMBER, match.group())
            if len(quoted) not in lengths:
                continue
            checked += 1
            assert any(
                len(scores) == len(quoted) and all(map(_rounds_to, scores, quoted)) for scores in reported
            ), f"{where}: {match.group()!r} are no arm's per-seed final scores"
    assert checked, "no list of per-seed final scores was found"
