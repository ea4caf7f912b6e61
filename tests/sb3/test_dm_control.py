"""DeepMind Control through sb3-era-zoo with the shipped hyper-parameters (needs ``era-rl[dmc]``; CI runs it)."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest
import torch as th

from era_core import gaussian_entropy
from sb3_era import ERASAC, zoo

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("dm_control") is None,
    reason="DeepMind Control not installed (pip install 'era-rl[dmc]'; CI runs this in its dmc environment)",
)


def test_dmc_extra_resolves_mujoco_3():
    # dm-control 1.0.50 crashes on the first reset with mujoco 4 ('MjModel' has no 'flex_vertedge').
    assert importlib.metadata.version("mujoco").startswith("3.")


def test_sac_era_trains_on_dog_run_with_the_shipped_hyperparams(tmp_path):
    env_id = "dm_control/dog-run-v0"
    # The shipped settings, except that gradient steps start after 100 steps instead of 5000.
    zoo.main(
        ["train", "--algo", "sac_era", "--env", env_id, "-n", "300", "-params", "learning_starts:100",
         "--eval-freq", "-1", "--seed", "0", "--num-threads", "1", "--device", "cpu", "-f", str(tmp_path)]
    )  # fmt: skip
    (model_path,) = (tmp_path / "sac_era").glob("*/*.zip")  # rl-zoo3 names the folder after the env id
    model = ERASAC.load(model_path, device="cpu")
    assert model.num_timesteps == 300
    assert model.policy.net_arch == [512, 512]
    actor = model.policy.actor
    action_dim = model.action_space.shape[0]
    assert actor.era.entropy_floor().item() == pytest.approx(-0.5 * action_dim)
    observations = th.randn(256, model.observation_space.shape[0], generator=th.Generator().manual_seed(0))
    with th.no_grad():
        _, log_std, _ = actor.get_action_dist_params(observations * 10.0)
    assert gaussian_entropy(log_std).min().item() >= -0.5 * action_dim - 1e-4
