"""A small environment and sizes shared by the sb3_era tests (CI has 2 cores: tiny nets, short runs)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

TINY_NET = [32, 32]


class ReachTargetEnv(gym.Env):
    """Cheap continuous control task with a 3-d action box of non-unit bounds: reach a target in the obs.

    The reward is ``-|a - target|^2`` with the target inside the bounds. Three action dimensions make the
    ERA softmax matter (with one dimension the log-std is pinned at the floor), and the ``[-2, 2]`` bounds
    exercise the rescaling; no physics simulator is needed.
    """

    def __init__(self, episode_length: int = 50):
        self.observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = spaces.Box(-2.0, 2.0, (3,), np.float32)
        self.episode_length = episode_length
        self._steps = 0
        self._obs = np.zeros(4, np.float32)

    def _target(self) -> np.ndarray:
        return 1.5 * self._obs[:3]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._steps = 0
        self._obs = self.np_random.uniform(-1.0, 1.0, 4).astype(np.float32)
        return self._obs, {}

    def step(self, action: np.ndarray):
        reward = -float(np.sum((np.asarray(action) - self._target()) ** 2))
        self._steps += 1
        self._obs = self.np_random.uniform(-1.0, 1.0, 4).astype(np.float32)
        return self._obs, reward, False, self._steps >= self.episode_length, {}
