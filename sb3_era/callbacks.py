"""Logging of the ERA floor and of the entropies it controls, through SB3's logger.

Keys written: ``era/entropy_floor`` (the guaranteed floor), ``era/gaussian_entropy`` and
``era/gaussian_entropy_min`` (the unbounded Gaussian's entropy, mean and minimum over the measured
states; the floor holds when the minimum is at or above it), ``era/policy_entropy`` (the final bounded
policy's mean entropy in the ``[-1, 1]``-scaled action space, exact for truncated-normal and categorical
actions, a one-sample-per-state Monte-Carlo estimate for the tanh-squashed Gaussian; lower than the
Gaussian's, most where actions saturate)
and, for a per-state floor, ``era/delta``. PPO's own ``train/std`` shows the raw ``log_std`` parameter,
which is not the standard deviation ERA produces.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import obs_as_tensor

from sb3_era.policies import distribution_entropy_stats


def _is_era_policy(policy: th.nn.Module) -> bool:
    actor = getattr(policy, "actor", None)
    return hasattr(policy, "entropy_stats") or (actor is not None and hasattr(actor, "entropy_stats"))


def warn_if_entropy_bonus(model: BaseAlgorithm) -> None:
    """Warn when an ERA policy is trained with an entropy bonus, which counts the entropy twice.

    :param model: an SB3 algorithm; nothing happens unless its policy is an ERA policy.
    """
    ent_coef = getattr(model, "ent_coef", 0.0)
    if not _is_era_policy(model.policy) or (not isinstance(ent_coef, str) and float(ent_coef) == 0.0):
        return
    warnings.warn(
        f"ent_coef={ent_coef!r} with an ERA policy adds an entropy bonus on top of the ERA floor, which "
        "double-counts entropy; ERA replaces the bonus, so use ent_coef=0.0 (the default of the sb3_era "
        "algorithms).",
        UserWarning,
        stacklevel=3,
    )


def _recent(array: np.ndarray, buffer: ReplayBuffer | RolloutBuffer, n_states: int, upper: int) -> np.ndarray:
    """The newest rows of a buffer array, flattened over steps and envs."""
    if getattr(buffer, "generator_ready", False):
        # After a training pass a rollout buffer holds flat (n_envs * n_steps, ...) arrays.
        return array[-n_states:]
    steps = max(1, n_states // buffer.n_envs)
    rows = array[max(0, upper - steps) : upper]
    return rows.reshape(-1, *rows.shape[2:])


def _recent_observations(
    buffer: ReplayBuffer | RolloutBuffer, n_states: int, upper: int
) -> np.ndarray | dict[str, np.ndarray]:
    if isinstance(buffer.observations, dict):
        return {key: _recent(obs, buffer, n_states, upper) for key, obs in buffer.observations.items()}
    return _recent(buffer.observations, buffer, n_states, upper)


def policy_entropy_stats(model: BaseAlgorithm, n_states: int) -> dict[str, float]:
    """Measure the entropies of ``model``'s policy on its most recent states, ERA or not.

    The states are the newest ``n_states`` of the replay buffer (off-policy) or of the current rollout
    (on-policy; recurrent policies start from the stored LSTM states). Random draws use a forked RNG, so
    measuring does not change the course of training. An ERA policy reports its floor too; a stock SB3
    policy (SAC, TQC, PPO, A2C, ...) is measured with the same code
    (:func:`sb3_era.policies.distribution_entropy_stats`), so a baseline and its ERA counterpart compare.

    :param model: an SB3 on- or off-policy algorithm.
    :param n_states: how many recent states to measure on.
    :return: the measurements (see the module docstring), or an empty dict before any state is stored.
    """
    policy = model.policy
    if isinstance(model, OffPolicyAlgorithm):
        buffer = model.replay_buffer
        if buffer is None or buffer.size() == 0:
            return {}
        # The newest rows end at pos; when the buffer has just wrapped around they end at its end.
        upper = buffer.pos or buffer.buffer_size
        observations = _recent_observations(buffer, n_states, upper)
        if model._vec_normalize_env is not None:
            observations = model._vec_normalize_env.normalize_obs(observations)
    elif isinstance(model, OnPolicyAlgorithm):
        buffer = model.rollout_buffer
        if buffer.pos == 0 and not buffer.full:
            return {}
        upper = buffer.pos
        observations = _recent_observations(buffer, n_states, upper)
    else:
        raise TypeError(
            f"entropy logging supports SB3 on- and off-policy algorithms, got {type(model).__name__}"
        )

    was_training = policy.training
    policy.set_training_mode(False)
    devices = [policy.device.index or 0] if policy.device.type == "cuda" else []
    with th.random.fork_rng(devices=devices), th.no_grad():
        # Buffer-shaped (a Discrete observation is stored as (n, 1)): converted as the host's train() does,
        # not through obs_to_tensor, which expects observations as the env returns them.
        obs_tensor = obs_as_tensor(observations, policy.device)
        if isinstance(policy, RecurrentActorCriticPolicy):
            # Stored as (n_steps, n_layers, n_envs, hidden) until a training pass flattens them.
            lstm_states = tuple(
                th.as_tensor(
                    _recent(
                        states if buffer.generator_ready else states.swapaxes(1, 2), buffer, n_states, upper
                    ),
                    device=policy.device,
                )
                .swapaxes(0, 1)
                .contiguous()
                for states in (buffer.hidden_states_pi, buffer.cell_states_pi)
            )
            episode_starts = th.as_tensor(
                _recent(buffer.episode_starts, buffer, n_states, upper), device=policy.device
            )
            if _is_era_policy(policy):
                stats = policy.entropy_stats(obs_tensor, lstm_states, episode_starts)
            else:
                distribution, _ = policy.get_distribution(obs_tensor, lstm_states, episode_starts)
                stats = _stock_entropy_stats(model, distribution)
        elif _is_era_policy(policy):
            stats = (
                policy.actor.entropy_stats(obs_tensor)
                if hasattr(policy, "actor")
                else policy.entropy_stats(obs_tensor)
            )
        elif hasattr(policy, "actor"):
            mean_actions, log_std, kwargs = policy.actor.get_action_dist_params(obs_tensor)
            stats = _stock_entropy_stats(
                model, policy.actor.action_dist.proba_distribution(mean_actions, log_std, **kwargs)
            )
        else:
            stats = _stock_entropy_stats(model, policy.get_distribution(obs_tensor))
    policy.set_training_mode(was_training)
    return stats


def _stock_entropy_stats(model: BaseAlgorithm, distribution: Distribution) -> dict[str, float]:
    space = model.action_space
    half_range = (space.high - space.low) / 2 if isinstance(space, spaces.Box) else None
    return distribution_entropy_stats(distribution, None, half_range)


def era_entropy_stats(model: BaseAlgorithm, n_states: int) -> dict[str, float]:
    """Measure the ERA floor and entropies of ``model``'s ERA policy on its most recent states.

    :param model: an SB3 algorithm with an ERA policy.
    :param n_states: how many recent states to measure on.
    :return: see :func:`policy_entropy_stats`.
    :raises ValueError: when the policy is not an ERA policy.
    """
    if not _is_era_policy(model.policy):
        raise ValueError(f"era_entropy_stats needs an ERA policy, got {type(model.policy).__name__}")
    return policy_entropy_stats(model, n_states)


def record_era_stats(model: BaseAlgorithm, n_states: int) -> None:
    """Measure with :func:`era_entropy_stats` and record the results under ``era/`` in ``model.logger``."""
    for key, value in era_entropy_stats(model, n_states).items():
        model.logger.record(f"era/{key}", value)


class ERAEntropyCallback(BaseCallback):
    """
    Log the ERA floor and the entropies it controls for a plain SB3 algorithm used with an ERA policy.

    The sb3_era algorithms (``ERASAC``, ``ERAPPO``, ...) log the same keys on their own, each time they
    dump their logs. Also warns when the algorithm adds an entropy bonus (``ent_coef`` not 0).

    :param log_freq: Measure every ``log_freq`` environment steps (checked at the end of each rollout).
    :param n_states: Number of recent states to measure on.
    :param verbose: Verbosity level: 0 for no output, 1 for info messages
    """

    def __init__(self, log_freq: int = 1000, n_states: int = 256, verbose: int = 0):
        super().__init__(verbose)
        if log_freq < 1 or n_states < 1:
            raise ValueError(
                f"log_freq and n_states must be >= 1, got log_freq={log_freq}, n_states={n_states}"
            )
        self.log_freq = log_freq
        self.n_states = n_states
        self._last_measured = 0

    def _init_callback(self) -> None:
        if not _is_era_policy(self.model.policy):
            raise ValueError(
                f"ERAEntropyCallback needs an ERA policy, got {type(self.model.policy).__name__}"
            )
        warn_if_entropy_bonus(self.model)
        self._last_measured = self.model.num_timesteps - self.log_freq

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.model.num_timesteps - self._last_measured >= self.log_freq:
            self._last_measured = self.model.num_timesteps
            record_era_stats(self.model, self.n_states)
