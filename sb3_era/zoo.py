"""
RL Baselines3 Zoo with the ERA algorithms, without forking rl-zoo3.

:func:`register_zoo_algorithms` adds ``sac_era``, ``tqc_era``, ``crossq_era``, ``ppo_era`` and ``a2c_era`` to
rl-zoo3's algorithm, Optuna-sampler and trial-converter registries. The ``sb3-era-zoo`` console script
(also ``python -m sb3_era.zoo``) registers them, then runs rl-zoo3's own scripts::

    sb3-era-zoo train --algo sac_era --env Hopper-v5
    sb3-era-zoo enjoy --algo sac_era --env Hopper-v5 --folder logs
    sb3-era-zoo optimize --algo sac_era --env Hopper-v5 --storage logs/study.log --study-name sac_era-hopper

Every rl-zoo3 option passes through unchanged. ``train`` also takes two options of its own:
``--resume`` (checkpoint every ``--save-freq`` steps and continue a killed run from its last checkpoint, see
:class:`sb3_era.zoo_resume.ResumableExperimentManager`) and ``--entropy-trace`` (write the policy's entropy
at every evaluation to ``entropy.npz``, for ERA and stock policies alike). For the ``*_era`` algorithms, ``train`` and ``optimize`` read
the shipped ``hyperparams/<algo>.yml`` unless ``--conf-file`` is given, and ``enjoy`` looks in ``logs``
(rl-zoo3's training folder) unless ``--folder`` is given. ``optimize`` is ``train -optimize``. A
``--conf-file`` that is not an existing file but names a shipped one (``sac_authors``, ``tqc_authors.yml``:
the baselines with the ERA authors' settings and critic) is that shipped file, for any algorithm::

    sb3-era-zoo train --algo sac --env Hopper-v5 --conf-file sac_authors
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import rl_zoo3.train
from rl_zoo3 import hyperparams_opt
from rl_zoo3 import utils as zoo_utils
from rl_zoo3.enjoy import enjoy
from rl_zoo3.train import train
from stable_baselines3.common.base_class import BaseAlgorithm

import hyperparams
from sb3_era import ERAA2C, ERAPPO, ERASAC, ERATQC, ERACrossQ
from sb3_era.zoo_resume import ResumableExperimentManager
from sb3_era.zoo_samplers import ERA_HYPERPARAMS_CONVERTER, ERA_HYPERPARAMS_SAMPLER

__all__ = ["COMMANDS", "ERA_ALGOS", "main", "register_zoo_algorithms", "zoo_arguments"]

ERA_ALGOS: dict[str, type[BaseAlgorithm]] = {
    "sac_era": ERASAC,
    "tqc_era": ERATQC,
    "crossq_era": ERACrossQ,
    "ppo_era": ERAPPO,
    "a2c_era": ERAA2C,
}

# rl-zoo3's scripts, which read the registries when they build their parsers.
ZOO_SCRIPTS: dict[str, Callable[[], None]] = {"train": train, "enjoy": enjoy, "optimize": train}
COMMANDS = tuple(ZOO_SCRIPTS)

# rl-zoo3's default output folder of `train`, where `enjoy` finds the ERA agents (none are on the Hub).
ZOO_LOG_FOLDER = "logs"
DM_CONTROL_PREFIX = "dm_control/"

USAGE = f"""usage: sb3-era-zoo {{{",".join(COMMANDS)}}} [rl-zoo3 options]

RL Baselines3 Zoo with the ERA algorithms {", ".join(ERA_ALGOS)} registered.
  train     rl-zoo3's train script
  enjoy     rl-zoo3's enjoy script
  optimize  rl-zoo3's train script with -optimize (Optuna; --storage journal.log or an RDB URL for
            several workers on one --study-name)
Run `sb3-era-zoo <command> --help` for the rl-zoo3 options. `train` also takes
  --resume         checkpoint every --save-freq steps; continue the newest unfinished run from its checkpoint
  --entropy-trace  write the policy's entropy at every evaluation to entropy.npz"""


def register_zoo_algorithms() -> None:
    """Add the ERA algorithms, their Optuna samplers and trial converters to rl-zoo3's registries.

    Safe to call more than once; the stock entries are left untouched.
    """
    zoo_utils.ALGOS.update(ERA_ALGOS)
    hyperparams_opt.HYPERPARAMS_SAMPLER.update(ERA_HYPERPARAMS_SAMPLER)
    hyperparams_opt.HYPERPARAMS_CONVERTER.update(ERA_HYPERPARAMS_CONVERTER)


def _find_option(argv: Sequence[str], *flags: str) -> str | None:
    """Value of an option in an rl-zoo3 command line (argparse's own matching, abbreviations included)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(*flags, dest="value")
    known, _ = parser.parse_known_args(list(argv))
    return known.value


def _has_flag(argv: Sequence[str], *flags: str) -> bool:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(*flags, dest="value", action="store_true")
    known, _ = parser.parse_known_args(list(argv))
    return known.value


def _dm_control_arguments(argv: Sequence[str]) -> list[str]:
    """``--gym-packages shimmy`` for a DeepMind Control id (shimmy registers them on import)."""
    env_id = _find_option(argv, "--env")
    if env_id is None or not env_id.startswith(DM_CONTROL_PREFIX):
        return []
    if importlib.util.find_spec("dm_control") is None:
        raise SystemExit(
            f"sb3-era-zoo: {env_id} needs DeepMind Control: pip install 'era-rl[dmc]' "
            "(shimmy[dm-control]; dm-control needs mujoco<4)"
        )
    if _find_option(argv, "--gym-packages") is not None:
        return []
    return ["--gym-packages", "shimmy"]


def zoo_arguments(command: str, argv: Sequence[str]) -> list[str]:
    """
    The rl-zoo3 command line that ``sb3-era-zoo <command> <argv>`` runs.

    :param command: one of :data:`COMMANDS`.
    :param argv: the rl-zoo3 options the user gave.
    :return: ``argv`` plus the ERA defaults: for the ``*_era`` algorithms the shipped hyper-parameter file
        (``train``/``optimize``) or the ``logs`` folder (``enjoy``); the path of a shipped file named by
        ``--conf-file`` (a later option wins in argparse); ``-optimize`` for ``optimize``;
        ``--gym-packages shimmy`` for DeepMind Control ids.
    :raises ValueError: for an unknown command.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; use one of {COMMANDS}")
    arguments = list(argv)
    algo = _find_option(arguments, "--algo")
    if command == "enjoy":
        if algo in ERA_ALGOS and _find_option(arguments, "-f", "--folder") is None:
            arguments += ["--folder", ZOO_LOG_FOLDER]
    else:
        conf_file = _find_option(arguments, "-conf", "--conf-file")
        if algo in ERA_ALGOS and conf_file is None:
            arguments += ["--conf-file", str(hyperparams.path(algo))]
        elif (
            conf_file is not None
            and not Path(conf_file).exists()
            and conf_file.removesuffix(".yml") in hyperparams.available()
        ):
            arguments += ["--conf-file", str(hyperparams.path(conf_file))]
        if command == "optimize" and not _has_flag(arguments, "-optimize", "--optimize-hyperparameters"):
            arguments.append("--optimize-hyperparameters")
    return arguments + _dm_control_arguments(arguments)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``sb3-era-zoo``: ``sb3-era-zoo {train,enjoy,optimize} [rl-zoo3 options]``.

    :param argv: the command and its options; ``sys.argv[1:]`` when ``None``.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if arguments else 2)
    command, options = arguments[0], arguments[1:]
    if command not in COMMANDS:
        raise SystemExit(
            f"sb3-era-zoo: unknown command {command!r}; use one of {', '.join(COMMANDS)}\n{USAGE}"
        )
    register_zoo_algorithms()
    run_options, options = _run_options(options) if command == "train" else (argparse.Namespace(), options)
    zoo_argv = zoo_arguments(command, options)
    saved_argv = sys.argv
    # rl-zoo3's scripts parse sys.argv themselves.
    sys.argv = [f"sb3-era-zoo {command}", *zoo_argv]
    # rl-zoo3's train script builds the ExperimentManager it imported; ours resumes and traces entropy.
    stock_manager = rl_zoo3.train.ExperimentManager
    if getattr(run_options, "resume", False) or getattr(run_options, "entropy_trace", False):
        rl_zoo3.train.ExperimentManager = functools.partial(
            ResumableExperimentManager, resume=run_options.resume, entropy_trace=run_options.entropy_trace
        )
    try:
        ZOO_SCRIPTS[command]()
    finally:
        sys.argv = saved_argv
        rl_zoo3.train.ExperimentManager = stock_manager


def _run_options(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split ``train``'s own options (``--resume``, ``--entropy-trace``) from the rl-zoo3 ones."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--entropy-trace", action="store_true")
    return parser.parse_known_args(list(argv))


if __name__ == "__main__":
    main()
