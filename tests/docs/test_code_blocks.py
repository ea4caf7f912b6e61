"""Every code block of README.md and docs/ is a test, so that an example that stops working fails the suite.

The info string after the language says what happens to a block (GitHub shows only the language; MkDocs
passes the rest through, ``relaxed_headers`` in ``mkdocs.yml``):

- ``python``: runs, in-process, in a fresh namespace and a temporary working directory, with SB3 trainings
  capped by the ``docs_budget`` fixture (``ERA_DOCS_MAX_TIMESTEPS``, ``tests/docs/conftest.py``).
- ``python skip="reason"``: not run, reported as skipped with the reason (no network, needs a GPU, ...).
- ``bash test``: a cheap command (``--help``, a tiny run), run with ``bash -euo pipefail`` from the repository
  root; it must exit with 0.
- ``bash skip="reason"``: too long or needs what CI has not (a cluster, a GPU, the Hub); only its syntax is
  checked (``bash -n``).

A ``bash`` block must say which (``test`` or ``skip``), so no command is left out silently. Blocks in other
languages (``yaml``, ``text``) are not code and are not collected.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LANGUAGES = {"python": {"skip"}, "bash": {"skip", "test"}}
SHELL_TIMEOUT_S = 600


@dataclass(frozen=True)
class CodeBlock:
    """One fenced code block: where it is, its language, its source and the options of its info string."""

    path: Path
    line: int
    language: str
    source: str
    options: dict[str, str]

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse_options(info: str) -> tuple[str, dict[str, str]]:
    """``'bash skip="too long"'`` -> ``("bash", {"skip": "too long"})``; a bare word maps to ``""``."""
    words = shlex.split(info)
    if not words:
        return "", {}
    options = {}
    for word in words[1:]:
        key, _, value = word.partition("=")
        options[key] = value
    return words[0], options


def code_blocks(path: Path) -> list[CodeBlock]:
    """The Python and bash blocks of one Markdown file, in order."""
    blocks = []
    for token in MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8")):
        if token.type != "fence" or token.map is None:
            continue
        language, options = parse_options(token.info)
        if language in LANGUAGES:
            # token.map[0] is the fence line (0-based), so the code starts on line map[0] + 2 (1-based).
            blocks.append(CodeBlock(path, token.map[0] + 2, language, token.content, options))
    return blocks


BLOCKS = [block for path in DOC_FILES for block in code_blocks(path)]
PYTHON_BLOCKS = [block for block in BLOCKS if block.language == "python"]
BASH_BLOCKS = [block for block in BLOCKS if block.language == "bash"]


def check_options(block: CodeBlock) -> None:
    """Fail on an option this collector does not know, or a bash block that says neither ``test`` nor ``skip``."""
    unknown = set(block.options) - LANGUAGES[block.language]
    assert not unknown, f"{block.id}: unknown code-block options {sorted(unknown)}"
    if "skip" in block.options:
        assert block.options["skip"], f'{block.id}: give the reason, skip="..."'
        assert "test" not in block.options, f"{block.id}: a block is either test or skip"
    elif block.language == "bash" and "test" not in block.options:
        pytest.fail(f'{block.id}: mark the bash block `test` (cheap, runs) or `skip="reason"`')


def test_the_collector_finds_the_documentation() -> None:
    assert len(DOC_FILES) > 10
    assert len(PYTHON_BLOCKS) >= 8 and len(BASH_BLOCKS) >= 10


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda block: block.id)
def test_python_block_runs(block: CodeBlock, docs_budget: int, in_tmp_dir: Path) -> None:
    check_options(block)
    if "skip" in block.options:
        pytest.skip(block.options["skip"])
    # Leading blank lines make a traceback point at the block's own line in the Markdown file.
    code = compile("\n" * (block.line - 1) + block.source, str(block.path), "exec")
    exec(code, {"__name__": "__docs__"})


@pytest.mark.parametrize("block", BASH_BLOCKS, ids=lambda block: block.id)
def test_bash_block(block: CodeBlock, tmp_path: Path) -> None:
    check_options(block)
    syntax = subprocess.run(["bash", "-n"], input=block.source, text=True, capture_output=True)
    assert syntax.returncode == 0, f"{block.id}: {syntax.stderr}"
    if "skip" in block.options:
        pytest.skip(block.options["skip"])
    # `python` and the console scripts are those of the interpreter running the tests; the packages are this
    # checkout's.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # A wrapper, not a symlink: a virtual environment's interpreter reached through a symlink in another folder
    # finds no pyvenv.cfg beside it and runs as the base interpreter, without the environment's packages.
    wrapper = bin_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = dict(
        os.environ,
        PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MPLBACKEND="Agg",
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.source],
        cwd=ROOT,
        env=env,
        text=True,
        capture_output=True,
        timeout=SHELL_TIMEOUT_S,
    )
    assert result.returncode == 0, (
        f"{block.id} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )


def test_a_bash_block_must_say_whether_it_runs(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text('```bash\necho unmarked\n```\n\n```bash skip="too long"\necho marked\n```\n')
    unmarked, marked = (CodeBlock(**{**vars(block), "path": ROOT / "page.md"}) for block in code_blocks(page))
    assert (unmarked.line, marked.options) == (2, {"skip": "too long"})
    with pytest.raises(pytest.fail.Exception, match="mark the bash block"):
        check_options(unmarked)
    check_options(marked)


def test_unknown_options_and_empty_reasons_are_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text('```python skp="typo"\npass\n```\n\n```python skip=""\npass\n```\n')
    typo, empty = (CodeBlock(**{**vars(block), "path": ROOT / "page.md"}) for block in code_blocks(page))
    with pytest.raises(AssertionError, match="unknown code-block options"):
        check_options(typo)
    with pytest.raises(AssertionError, match="give the reason"):
        check_options(empty)


def test_docs_budget_caps_every_sb3_training(docs_budget: int) -> None:
    from sb3_era import ERAPPO, ERASAC

    sac = ERASAC("MlpPolicy", "Pendulum-v1", seed=0).learn(10_000)
    assert sac.num_timesteps == docs_budget
    ppo = ERAPPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, seed=0).learn(10_000)
    assert ppo.num_timesteps == docs_budget
