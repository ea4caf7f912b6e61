"""Evidence protocols: the YAML files under ``benchmarks/evidence/protocols`` and the runs they expand to.

A protocol names its arms (an rl-zoo3 algorithm and hyper-parameter file each), environments, seeds, budget
and evaluation schedule. Every (arm, environment, seed) is one run, an ``sb3-era-zoo train`` process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rl_zoo3.utils import EnvironmentName

REPOSITORY = Path(__file__).resolve().parents[2]
PROTOCOLS = Path(__file__).resolve().parent / "protocols"
RESULTS = Path(__file__).resolve().parent / "results"

_REQUIRED = ("name", "arms", "envs", "seeds", "n_timesteps", "eval_freq", "eval_episodes", "save_freq")


@dataclass(frozen=True)
class Arm:
    """One configuration compared in a protocol.

    :param name: the arm's name in results and plots (e.g. ``ppo_era``).
    :param algo: the ``sb3-era-zoo``/rl-zoo3 algorithm (``ppo``, ``ppo_era``, ``sac``...).
    :param conf_file: rl-zoo3 hyper-parameter file, relative to the repository root.
    :param params: extra rl-zoo3 ``-params`` entries (``key:value`` strings).
    """

    name: str
    algo: str
    conf_file: str
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class Run:
    """One training of one arm on one environment with one seed."""

    protocol: str
    arm: Arm
    env: str
    seed: int

    @property
    def env_name(self) -> str:
        """rl-zoo3's folder name of the environment (``dm_control/dog-run-v0`` -> ``dm_control-dog-run-v0``)."""
        return str(EnvironmentName(self.env))

    @property
    def key(self) -> str:
        """``<arm>/<env name>_s<seed>``: the run's folder under the protocol's runs and results folders."""
        return f"{self.arm.name}/{self.env_name}_s{self.seed}"


@dataclass(frozen=True)
class Protocol:
    """A parsed protocol file (see the files in ``benchmarks/evidence/protocols``)."""

    name: str
    arms: tuple[Arm, ...]
    envs: tuple[str, ...]
    seeds: tuple[int, ...]
    n_timesteps: int
    eval_freq: int
    eval_episodes: int
    save_freq: int
    baseline: str
    reference_scores: dict[str, tuple[float, float]]
    gym_packages: tuple[str, ...] = ()

    def runs(self) -> list[Run]:
        """Every run, seed-major (all arms and environments of seed 0 first), so partial results stay balanced."""
        return [
            Run(self.name, arm, env, seed) for seed in self.seeds for env in self.envs for arm in self.arms
        ]

    def command(self, run: Run, log_folder: Path) -> list[str]:
        """The ``sb3-era-zoo train`` command line of one run, logging into ``log_folder``."""
        command = [
            "sb3-era-zoo",
            "train",
            "--algo",
            run.arm.algo,
            "--env",
            run.env,
            "--seed",
            str(run.seed),
            "--conf-file",
            run.arm.conf_file,
            "-n",
            str(self.n_timesteps),
            "--eval-freq",
            str(self.eval_freq),
            "--eval-episodes",
            str(self.eval_episodes),
            "--save-freq",
            str(self.save_freq),
            "-f",
            str(log_folder),
            "-tb",
            str(log_folder / "tensorboard"),
            "--num-threads",
            "1",
            "--device",
            "cpu",
            "--resume",
            "--entropy-trace",
        ]
        if self.gym_packages:
            command += ["--gym-packages", *self.gym_packages]
        if run.arm.params:
            command += ["-params", *run.arm.params]
        return command


def load_protocol(path: str | Path) -> Protocol:
    """Read and check a protocol file.

    :param path: a protocol YAML file, or the name of one in ``benchmarks/evidence/protocols``.
    :raises ValueError: naming what is missing or inconsistent.
    """
    file = Path(path)
    if not file.is_file():
        file = PROTOCOLS / f"{path}.yml"
    if not file.is_file():
        available = sorted(p.stem for p in PROTOCOLS.glob("*.yml"))
        raise ValueError(f"no protocol file {path!r}; the shipped protocols are {available}")
    spec: dict[str, Any] = yaml.safe_load(file.read_text())
    missing = [key for key in _REQUIRED if key not in spec]
    if missing:
        raise ValueError(f"protocol {file} lacks {missing}")
    arms = tuple(
        Arm(name, arm["algo"], arm["conf_file"], tuple(arm.get("params", ())))
        for name, arm in spec["arms"].items()
    )
    for arm in arms:
        if not (REPOSITORY / arm.conf_file).is_file():
            raise ValueError(f"arm {arm.name!r} of {file}: no hyper-parameter file {arm.conf_file}")
    baseline = spec.get("baseline", arms[0].name)
    if baseline not in {arm.name for arm in arms}:
        raise ValueError(f"baseline {baseline!r} of {file} is not one of its arms {[a.name for a in arms]}")
    if spec["save_freq"] % spec["eval_freq"]:
        raise ValueError(
            f"save_freq={spec['save_freq']} must be a multiple of eval_freq={spec['eval_freq']} in {file}, "
            "so that a resumed run keeps the evaluation schedule"
        )
    return Protocol(
        name=spec["name"],
        arms=arms,
        envs=tuple(spec["envs"]),
        seeds=tuple(int(seed) for seed in spec["seeds"]),
        n_timesteps=int(spec["n_timesteps"]),
        eval_freq=int(spec["eval_freq"]),
        eval_episodes=int(spec["eval_episodes"]),
        save_freq=int(spec["save_freq"]),
        baseline=baseline,
        reference_scores={env: tuple(bounds) for env, bounds in spec.get("reference_scores", {}).items()},
        gym_packages=tuple(spec.get("gym_packages", ())),
    )
