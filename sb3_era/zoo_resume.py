"""
Resumable rl-zoo3 training runs and an entropy trace beside rl-zoo3's evaluations.

``sb3-era-zoo train --resume`` swaps rl-zoo3's ``ExperimentManager`` for :class:`ResumableExperimentManager`:
the run checkpoints itself every ``--save-freq`` steps (model with its optimizers, replay buffer and
``VecNormalize`` statistics), and a run that was killed continues from its last checkpoint in the same
folder, with the same total budget, evaluation schedule and evaluation history, instead of starting over.
``--entropy-trace`` adds :class:`EntropyTraceCallback`, which measures the policy's entropy on recent
states at every evaluation (the same code for ERA and stock SB3 policies) and writes ``entropy.npz``.

A resumed run is statistically equivalent to an uninterrupted one but not bitwise identical: the
environments restart from a reset and the random generators from the seed.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.utils import get_latest_run_id
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv

from sb3_era.callbacks import policy_entropy_stats

__all__ = [
    "CHECKPOINT_FOLDER",
    "EntropyTraceCallback",
    "ResumableExperimentManager",
    "ResumeCheckpointCallback",
    "read_checkpoint_state",
]

CHECKPOINT_FOLDER = "checkpoint"
_STATE_FILE = "state.json"
_MODEL_FILE = "model.zip"
_REPLAY_BUFFER_FILE = "replay_buffer.pkl.gz"
# rl-zoo3's `--trained-agent` loading reads this uncompressed name; checkpoints of earlier versions used it.
_UNCOMPRESSED_REPLAY_BUFFER_FILE = "replay_buffer.pkl"
_VECNORMALIZE_FILE = "vecnormalize.pkl"


def read_checkpoint_state(run_folder: str | os.PathLike) -> dict[str, Any] | None:
    """The state of a run's last complete checkpoint, or ``None`` when it has none.

    :param run_folder: an rl-zoo3 run folder (``<log folder>/<algo>/<env>_<id>``).
    :return: ``{"num_timesteps": int, "total_timesteps": int, "finished": bool}``.
    """
    state_file = Path(run_folder) / CHECKPOINT_FOLDER / _STATE_FILE
    if not state_file.is_file():
        return None
    return json.loads(state_file.read_text())


def _replace_atomically(save: Any, target: Path) -> None:
    """Write ``target`` through ``save(temporary path)`` then rename, so a kill never leaves half a file."""
    temporary = target.with_name(f".{target.name}.tmp")
    save(temporary)
    # SB3 appends ".zip" to a model path without it; the temporary name keeps its suffix.
    os.replace(temporary, target)


def _save_compressed(save: Any, path: Path) -> None:
    """Write ``save(file object)``'s bytes gzip-compressed to ``path``."""
    # SB3's `open_path` takes io's buffered classes only, not a GzipFile.
    with gzip.open(path, "wb", compresslevel=6) as compressed, io.BufferedWriter(compressed) as file:
        save(file)


class ResumeCheckpointCallback(BaseCallback):
    """
    Checkpoint a run so that it can resume: every ``save_freq`` steps and at the end of training.

    Writes ``<run folder>/checkpoint/``: ``model.zip`` (parameters and optimizers), ``replay_buffer.pkl.gz``
    (off-policy algorithms; gzip-compressed, as SB3 pickles the whole ``buffer_size``, mostly zeros until it
    fills: Hopper's 1M-transition buffer holding 125k transitions took 23 MB instead of 200 MB),
    ``<env name>/vecnormalize.pkl`` (when the environment is normalised), then ``state.json`` last, so the
    state file always describes complete files. Only the newest checkpoint is kept.

    :param save_freq: Checkpoint every ``save_freq`` environment steps (all environments together).
    :param save_path: The rl-zoo3 run folder.
    :param env_name: rl-zoo3's environment name (the folder of ``vecnormalize.pkl``).
    :param total_timesteps: The run's total budget, recorded to tell a finished run from a killed one.
    :param verbose: Verbosity level: 0 for no output, 1 for a line per checkpoint
    """

    def __init__(self, save_freq: int, save_path: str, env_name: str, total_timesteps: int, verbose: int = 0):
        super().__init__(verbose)
        if save_freq < 1:
            raise ValueError(f"save_freq must be >= 1 environment step, got {save_freq}")
        self.save_freq = save_freq
        self.folder = Path(save_path) / CHECKPOINT_FOLDER
        self.env_name = env_name
        self.total_timesteps = total_timesteps
        self._next_save = save_freq

    def _init_callback(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def _on_training_start(self) -> None:
        self._next_save = (self.model.num_timesteps // self.save_freq + 1) * self.save_freq

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next_save:
            self._next_save = (self.num_timesteps // self.save_freq + 1) * self.save_freq
            self.save()
        return True

    def _on_training_end(self) -> None:
        self.save()

    def save(self) -> None:
        """Write a complete checkpoint of the model at its current step."""
        model = self.model
        _replace_atomically(lambda path: model.save(path), self.folder / _MODEL_FILE)
        if hasattr(model, "save_replay_buffer") and getattr(model, "replay_buffer", None) is not None:
            _replace_atomically(
                lambda path: _save_compressed(model.save_replay_buffer, path),
                self.folder / _REPLAY_BUFFER_FILE,
            )
            (self.folder / _UNCOMPRESSED_REPLAY_BUFFER_FILE).unlink(missing_ok=True)
        vec_normalize = model.get_vec_normalize_env()
        if vec_normalize is not None:
            (self.folder / self.env_name).mkdir(exist_ok=True)
            _replace_atomically(vec_normalize.save, self.folder / self.env_name / _VECNORMALIZE_FILE)
        state = {
            "num_timesteps": int(model.num_timesteps),
            "total_timesteps": int(self.total_timesteps),
            "finished": bool(model.num_timesteps >= self.total_timesteps),
        }
        _replace_atomically(lambda path: path.write_text(json.dumps(state)), self.folder / _STATE_FILE)
        if self.verbose >= 1:
            print(f"Checkpoint at {model.num_timesteps} steps in {self.folder}")


class EntropyTraceCallback(BaseCallback):
    """
    Measure the policy's entropy on its most recent states every ``trace_freq`` steps; write ``entropy.npz``.

    The measurement is :func:`sb3_era.callbacks.policy_entropy_stats` (the same code for ERA and stock SB3
    policies, with a forked random generator so that measuring does not change training). The file holds
    ``timesteps`` and one array per measured key (``gaussian_entropy``, ``policy_entropy``, ...; ``nan``
    where a key does not apply).

    :param trace_freq: Measure every ``trace_freq`` environment steps (all environments together).
    :param log_path: Folder of ``entropy.npz``.
    :param n_states: Number of recent states to measure on.
    :param verbose: Verbosity level: 0 for no output, 1 for a line per measurement
    """

    FILE = "entropy.npz"

    def __init__(self, trace_freq: int, log_path: str, n_states: int = 256, verbose: int = 0):
        super().__init__(verbose)
        if trace_freq < 1 or n_states < 1:
            raise ValueError(f"trace_freq and n_states must be >= 1, got {trace_freq} and {n_states}")
        self.trace_freq = trace_freq
        self.path = Path(log_path) / self.FILE
        self.n_states = n_states
        self.trace: dict[str, list[float]] = {"timesteps": []}
        self._next = trace_freq

    def restore(self, up_to: int) -> None:
        """Load the trace written before a resume, keeping the measurements at or before step ``up_to``."""
        if not self.path.is_file():
            return
        with np.load(self.path) as saved:
            keep = saved["timesteps"] <= up_to
            self.trace = {key: saved[key][keep].tolist() for key in saved.files}

    def _on_training_start(self) -> None:
        self._next = (self.model.num_timesteps // self.trace_freq + 1) * self.trace_freq

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.trace_freq + 1) * self.trace_freq
            self.measure()
        return True

    def measure(self) -> None:
        """Measure now and rewrite ``entropy.npz``."""
        stats = policy_entropy_stats(self.model, self.n_states)
        if not stats:
            return
        n_rows = len(self.trace["timesteps"])
        for key in stats:
            self.trace.setdefault(key, [float("nan")] * n_rows)
        self.trace["timesteps"].append(self.num_timesteps)
        for key, values in self.trace.items():
            if key != "timesteps":
                values.append(float(stats.get(key, float("nan"))))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(self.path, **{key: np.asarray(values) for key, values in self.trace.items()})
        if self.verbose >= 1:
            print(f"Entropy at {self.num_timesteps} steps: {stats}")


class _ContinueStepCounter(BaseCallback):
    """Continue the step counter of a resumed run: ``learn(total)`` then trains ``total - resumed_from`` steps.

    SB3's ``learn`` resets the counter (``reset_num_timesteps=True``, what rl-zoo3 calls); setting it back at
    the start of training keeps the learning-rate schedules, ``learning_starts`` and the evaluation steps on
    the uninterrupted run's course.
    """

    def __init__(self, resumed_from: int):
        super().__init__()
        self.resumed_from = resumed_from

    def _on_training_start(self) -> None:
        self.model.num_timesteps = self.resumed_from
        self.model._num_timesteps_at_start = self.resumed_from

    def _on_step(self) -> bool:
        return True


def _set_aside_monitor_file(path: Path, max_steps: int) -> None:
    """Keep a monitor file's episodes that ended within ``max_steps`` steps, under a name the new run keeps.

    SB3's ``Monitor`` overwrites ``<rank>.monitor.csv`` when the resumed run creates its environments;
    ``<rank>.before-<step>.monitor.csv`` still matches SB3's ``load_results`` pattern.
    """
    lines = path.read_text().splitlines()
    header, rows = lines[:2], list(csv.DictReader(lines[1:]))
    kept, steps = [], 0
    for row, line in zip(rows, lines[2:], strict=True):
        steps += int(row["l"])
        if steps > max_steps:
            break
        kept.append(line)
    rank = path.name.removesuffix(Monitor.EXT).rstrip(".")
    path.with_name(f"{rank}.before-{max_steps}.{Monitor.EXT}").write_text("\n".join(header + kept) + "\n")
    path.unlink()


class ResumableExperimentManager(ExperimentManager):
    """
    rl-zoo3's ``ExperimentManager`` that checkpoints its run and resumes a killed run where it stopped.

    With ``resume=True`` the newest run folder of the algorithm and environment (``<env>_<id>``) is
    continued from its last checkpoint if it has one and has not finished: same folder, the model's
    optimizers, replay buffer and ``VecNormalize`` statistics restored, the remaining steps trained with the
    step counter continued (schedules and ``learning_starts`` as uninterrupted), the evaluation history kept
    and the monitor files cut at the checkpoint and set aside (``<rank>.before-<step>.monitor.csv``). A newest
    run without any checkpoint restarts in its folder; a finished one is left alone and a new run starts.
    Checkpoints are written every ``save_freq`` steps (rl-zoo3's own ``rl_model_*`` checkpoints are not kept).

    :param args: rl-zoo3's parsed arguments, then its ``ExperimentManager`` arguments.
    :param resume: Continue the newest unfinished run (see above).
    :param entropy_trace: Measure the entropy at every evaluation into ``entropy.npz``
        (:class:`EntropyTraceCallback`).
    :param kwargs: rl-zoo3's ``ExperimentManager`` keyword arguments.
    """

    def __init__(self, *args: Any, resume: bool = False, entropy_trace: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.resume = resume
        self.entropy_trace = entropy_trace
        self.resumed_from = 0
        if not resume:
            return
        if self.save_freq <= 0:
            raise ValueError("--resume needs checkpoints: give --save-freq N (environment steps, N > 0)")
        latest = get_latest_run_id(self.log_path, self.env_name)
        if latest == 0:
            return
        run_folder = os.path.join(self.log_path, f"{self.env_name}_{latest}")
        state = read_checkpoint_state(run_folder)
        if state is not None and state["finished"]:
            return
        self.save_path = run_folder
        self.params_path = f"{self.save_path}/{self.env_name}"
        if state is not None:
            self.resumed_from = state["num_timesteps"]
            self.trained_agent = os.path.join(run_folder, CHECKPOINT_FOLDER, _MODEL_FILE)
            self.continue_training = True

    def setup_experiment(self) -> tuple[BaseAlgorithm, dict[str, Any]] | None:
        if self.resumed_from:
            print(f"Resuming {self.save_path} from its checkpoint at {self.resumed_from} steps")
            for monitor_file in Path(self.save_path).glob(f"[0-9]*.{Monitor.EXT}"):
                if monitor_file.name.removesuffix(f".{Monitor.EXT}").isdigit():
                    _set_aside_monitor_file(monitor_file, self.resumed_from // self.n_envs)
        return super().setup_experiment()

    def _load_pretrained_agent(self, hyperparams: dict[str, Any], env: VecEnv) -> BaseAlgorithm:
        # rl-zoo3 loads the model, and an uncompressed `replay_buffer.pkl` beside it if there is one.
        model = super()._load_pretrained_agent(hyperparams, env)
        compressed = Path(self.trained_agent).with_name(_REPLAY_BUFFER_FILE)
        if compressed.is_file():
            print("Loading compressed replay buffer")
            with gzip.open(compressed, "rb") as decompressed, io.BufferedReader(decompressed) as file:
                model.load_replay_buffer(file, truncate_last_traj=self.truncate_last_trajectory)
        return model

    def create_callbacks(self) -> None:
        # rl-zoo3 divides the frequencies by n_envs in create_callbacks; ours count all environments' steps.
        save_freq, eval_freq = self.save_freq, self.eval_freq
        if self.resume:
            self.save_freq = -1
        super().create_callbacks()
        eval_callback = next((c for c in self.callbacks if isinstance(c, EvalCallback)), None)
        if eval_callback is not None and self.resumed_from:
            self._restore_evaluations(eval_callback)
        if self.resumed_from:
            # First, so that the other callbacks (the progress bar's total too) see the continued counter.
            self.callbacks.insert(0, _ContinueStepCounter(self.resumed_from))
        if self.entropy_trace:
            trace_freq = eval_freq if eval_freq > 0 else max(self.n_timesteps // 50, 1)
            trace = EntropyTraceCallback(trace_freq, self.save_path, verbose=self.verbose)
            if self.resumed_from:
                trace.restore(self.resumed_from)
            self.callbacks.append(trace)
        if self.resume:
            self.save_freq = save_freq
            # Last, so that a checkpoint at step t follows every measurement of step t (rl-zoo3's evaluation,
            # the entropy trace): a run killed right after it resumes with them.
            self.callbacks.append(
                ResumeCheckpointCallback(
                    save_freq, self.save_path, self.env_name, self.n_timesteps, verbose=self.verbose
                )
            )

    def _restore_evaluations(self, eval_callback: EvalCallback) -> None:
        """Keep the evaluations up to the checkpoint and continue the evaluation schedule from there."""
        # EvalCallback evaluates when its call counter is a multiple of eval_freq (per environment).
        eval_callback.n_calls = self.resumed_from // self.n_envs
        path = Path(self.save_path) / "evaluations.npz"
        if not path.is_file():
            return
        with np.load(path) as saved:
            keep = saved["timesteps"] <= self.resumed_from
            eval_callback.evaluations_timesteps = saved["timesteps"][keep].tolist()
            eval_callback.evaluations_results = saved["results"][keep].tolist()
            eval_callback.evaluations_length = saved["ep_lengths"][keep].tolist()
            if "successes" in saved.files:
                eval_callback.evaluations_successes = saved["successes"][keep].tolist()
        if eval_callback.evaluations_results:
            eval_callback.best_mean_reward = float(np.max(np.mean(eval_callback.evaluations_results, axis=1)))
