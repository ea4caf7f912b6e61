"""Mutation testing of one target with mutmut: ``python scripts/mutation.py era_core`` (targets: pyproject's
``[tool.era-mutation]``).

The target's sources and the tests are copied into ``build/mutation/<target>/``, whose ``pyproject.toml``
carries the target's ``[tool.mutmut]`` table, and mutmut runs there: niced, one process, the hypothesis
``mutation`` profile (tests/conftest.py). The script prints the mutation score and the surviving mutants
and writes them to ``build/mutation/<target>/summary.json``; ``mutmut show <name>`` run in that folder shows
a mutant's diff. Exit status: 0 when no mutant survived (those listed as ``equivalent`` in the target's table aside), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("era_core", "sb3_era", "timm_era", "trl_era", "hyperparams", "tests")
BASE_PYTEST_ARGS = ["-p", "no:cacheprovider", "-m", "not slow", "-k", "not torchscript and not export"]


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(value) for value in values) + "]"


def prepare(target: str, config: dict, workdir: Path) -> None:
    """Copy the sources and tests into ``workdir`` and write its pyproject with the target's mutmut table."""
    workdir.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in PACKAGES:
        if (workdir / name).exists():
            shutil.rmtree(workdir / name)
        shutil.copytree(ROOT / name, workdir / name, ignore=ignore)
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject = pyproject[: pyproject.index("\n[tool.mutmut]\n") + 1]
    lines = [
        "[tool.mutmut]",
        f"source_paths = {_toml_list(config['source_paths'])}",
        f"pytest_add_cli_args_test_selection = {_toml_list(config['tests'])}",
        f"pytest_add_cli_args = {_toml_list(BASE_PYTEST_ARGS)}",
    ]
    if config.get("only_mutate"):
        lines.append(f"only_mutate = {_toml_list(config['only_mutate'])}")
    if "timeout_multiplier" in config:
        lines.append(f"timeout_multiplier = {float(config['timeout_multiplier'])}")
    (workdir / "pyproject.toml").write_text(pyproject + "\n".join(lines) + "\n")


def summarise(workdir: Path, env: dict[str, str], names: list[str]) -> dict:
    """Counts per status and the surviving mutants, from ``mutmut results --all true``.

    With ``names`` (globs), only the mutants they match: the folder may hold results of earlier runs.
    """
    listing = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    status = dict(line.strip().rsplit(": ", 1) for line in listing.splitlines() if ": " in line)
    if names:
        status = {name: value for name, value in status.items() if any(fnmatch(name, n) for n in names)}
    counts = Counter(status.values())
    tested = counts["killed"] + counts["survived"] + counts["timeout"]
    return {
        "counts": dict(counts),
        "score": (counts["killed"] + counts["timeout"]) / tested if tested else None,
        "survived": sorted(name for name, value in status.items() if value == "survived"),
        "no_tests": sorted(name for name, value in status.items() if value == "no tests"),
    }


def main(argv: list[str] | None = None) -> int:
    targets = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["era-mutation"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=sorted(targets))
    parser.add_argument("--max-children", type=int, default=1, help="parallel mutmut workers (default 1)")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the mutmut process (default 10)")
    parser.add_argument("--summary-only", action="store_true", help="only summarise an earlier run")
    parser.add_argument(
        "names", nargs="*", help="mutant name globs to run (default: all), e.g. 'era_core.gaussian.*'"
    )
    args = parser.parse_args(argv)

    workdir = ROOT / "build" / "mutation" / args.target
    env = dict(os.environ, OMP_NUM_THREADS="1", HYPOTHESIS_PROFILE="mutation", HF_HUB_OFFLINE="1")
    if not args.summary_only:
        prepare(args.target, targets[args.target], workdir)
        command = [
            sys.executable,
            "-m",
            "mutmut",
            "run",
            "--max-children",
            str(args.max_children),
            *args.names,
        ]
        subprocess.run(["nice", "-n", str(args.nice), *command], cwd=workdir, env=env, check=True)
    summary = summarise(workdir, env, args.names)
    equivalent = set(targets[args.target].get("equivalent", []))
    summary["equivalent"] = sorted(equivalent & set(summary["survived"]))
    summary["survived"] = sorted(set(summary["survived"]) - equivalent)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if not summary["survived"] else 1


if __name__ == "__main__":
    sys.exit(main())
