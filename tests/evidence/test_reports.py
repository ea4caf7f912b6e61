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
    summary = json.loads((RESULTS / name / "report" / "report.json").read_text())
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
