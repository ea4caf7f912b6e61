"""SB3's logger gets era/entropy_floor, era/gaussian_entropy and the final policy's entropy."""

from __future__ import annotations

import csv

import pytest
import torch as th
from sb3_era_envs import TINY_NET, ReachTargetEnv
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.logger import configure

from sb3_era import ERAPPO, ERASAC, ERAActorCriticPolicy, ERAEntropyCallback, ERASACPolicy

ERA_KEYS = ("era/entropy_floor", "era/gaussian_entropy", "era/gaussian_entropy_min", "era/policy_entropy")


def _logged_rows(path) -> list[dict[str, str]]:
    with open(path / "progress.csv") as handle:
        return [row for row in csv.DictReader(handle) if row.get("era/entropy_floor")]


def _check_rows(rows: list[dict[str, str]]) -> None:
    assert rows, "no row with era/* values was logged"
    for row in rows:
        assert all(row[key] != "" for key in ERA_KEYS)
        assert float(row["era/gaussian_entropy_min"]) >= float(row["era/entropy_floor"]) - 1e-5
        # Truncating a Gaussian only removes entropy (exact values: the truncated distribution is used).
        assert float(row["era/policy_entropy"]) <= float(row["era/gaussian_entropy"]) + 1e-5


def test_era_sac_logs_the_floor_and_both_entropies_at_every_dump(tmp_path):
    model = ERASAC(
        "MlpPolicy",
        ReachTargetEnv(),
        learning_starts=32,
        batch_size=32,
        policy_kwargs=dict(net_arch=TINY_NET),
        seed=0,
    )
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(200, log_interval=1)
    rows = _logged_rows(tmp_path)
    _check_rows(rows)
    assert len(rows) == 200 // ReachTargetEnv().episode_length
    assert "era/delta" in rows[0]


def test_era_ppo_logs_the_floor_and_both_entropies_at_every_dump(tmp_path):
    model = ERAPPO("MlpPolicy", ReachTargetEnv(), n_steps=64, batch_size=32, n_epochs=1, seed=0)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(192)
    rows = _logged_rows(tmp_path)
    assert len(rows) == 3
    _check_rows(rows)


@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_callback_logs_era_values_for_plain_sb3_algorithms(algo, tmp_path):
    if algo == "sac":
        model = SAC(
            ERASACPolicy,
            ReachTargetEnv(),
            ent_coef=0.0,
            learning_starts=32,
            policy_kwargs=dict(net_arch=TINY_NET),
        )
    else:
        model = PPO(ERAActorCriticPolicy, ReachTargetEnv(), n_steps=64, batch_size=32, n_epochs=1)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(192, callback=ERAEntropyCallback(log_freq=50, n_states=64), log_interval=1)
    _check_rows(_logged_rows(tmp_path))


def test_era_logging_does_not_change_the_course_of_training():
    def train(algo, policy):
        th.manual_seed(0)
        model = algo(
            policy,
            ReachTargetEnv(),
            ent_coef=0.0,
            learning_starts=32,
            batch_size=32,
            seed=0,
            policy_kwargs=dict(net_arch=TINY_NET),
        )
        model.learn(150, log_interval=1)
        return model.policy.state_dict()

    logged, silent = train(ERASAC, "MlpPolicy"), train(SAC, ERASACPolicy)
    for name, tensor in silent.items():
        th.testing.assert_close(logged[name], tensor, rtol=0, atol=0)
