"""README.md's table of issue 9's speed goals is the one ``benchmarks/speed_goals.py`` renders from the committed
result files, and its commands rewrite those files with the options they were measured with."""

from __future__ import annotations

import json
import shlex

import pytest

from benchmarks import speed_goals
from benchmarks.sb3_throughput import auto_clock, build_parser


def test_the_readme_table_is_the_rendered_one():
    """A result file that moved, or a README edited by hand, fails here until
    ``PYTHONPATH=. python benchmarks/speed_goals.py --write`` is rerun."""
    assert speed_goals.readme_block(speed_goals.README.read_text()) == speed_goals.render()


def _files() -> list[str]:
    return sorted({name for goal in speed_goals.GOALS for name in (goal.before, *goal.now) if name})


@pytest.mark.parametrize("name", [name for name in _files() if name.startswith("sb3_throughput")])
def test_an_sb3_command_reproduces_the_recorded_options(name: str):
    words = shlex.split(speed_goals.command(name))
    assert words[:3] == ["PYTHONPATH=.", "python", "benchmarks/sb3_throughput.py"]
    args = vars(build_parser().parse_args(words[3:]))
    assert str(args.pop("out")) == f"benchmarks/results/{name}"
    config = json.loads((speed_goals.RESULTS / name).read_text())["config"]
    for option, value in config.items():
        if option == "out":
            continue
        expected = "auto" if option == "clock" and value == auto_clock(config["device"]) else value
        assert args[option] == expected, option


@pytest.mark.parametrize("name", [name for name in _files() if name.startswith("trl_step")])
def test_a_trl_command_is_the_recorded_one_writing_the_file_itself(name: str):
    recorded = shlex.split(json.loads((speed_goals.RESULTS / name).read_text())["command"])
    words = shlex.split(speed_goals.command(name))
    assert words[-2:] == ["--out", f"benchmarks/results/{name}"]
    assert words[1:-2] == [
        w for i, w in enumerate(recorded) if w != "--out" and (i == 0 or recorded[i - 1] != "--out")
    ]


def test_a_row_a_file_lacks_is_an_error():
    with pytest.raises(KeyError, match="no model 'SAC-ERA \\(nothing\\)'"):
        speed_goals.ratios("sb3_throughput-cpu-quiet-ppo-f9d18b9-61.json", "SAC-ERA (nothing)")
    with pytest.raises(KeyError, match="no mode 'era-nothing'"):
        speed_goals.ratios("trl_step-small-cpu.json", "era-nothing:time_ratio")


def test_a_value_that_rounds_onto_the_goal_shows_its_side():
    assert speed_goals._decisive(0.97951, 0.98) == "0.9795"
    assert speed_goals._decisive(0.98041, 0.98) == "0.9804"
    assert speed_goals._decisive(0.9824, 0.98) == "0.982"


def test_met_means_every_value_of_every_run_on_the_goals_side():
    rows = {
        line.split(" | ")[0].lstrip("| "): line.rstrip(" |").rsplit(" | ", 1)[-1]
        for line in speed_goals.render().splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
    }
    for goal in speed_goals.GOALS:
        values = [v for name in goal.now for v in speed_goals.ratios(name, goal.key)]
        met = all(v >= goal.goal for v in values) if goal.at_least else all(v <= goal.goal for v in values)
        expected = "yes" if met else "**no**"
        if goal.predates is not None:
            expected = f"not measured since {goal.predates}"
        assert rows[goal.path] == expected, goal.path


def test_a_row_whose_code_changed_since_its_runs_gives_no_verdict():
    """The H200 rows predate a change of their code (6f576ad: SAC-ERA's rsample; 9bf1128: TRL's rescaled rows)."""
    lines = {line.split(" | ")[0].lstrip("| "): line for line in speed_goals.render().splitlines()}
    stale = [goal for goal in speed_goals.GOALS if goal.predates is not None]
    assert stale
    for goal in stale:
        assert lines[goal.path].endswith(
            f"(the code before {goal.predates}) | not measured since {goal.predates} |"
        )
