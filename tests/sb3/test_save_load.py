"""model.save/load and policy.save/load keep every ERA knob; deterministic actions are unchanged; resume checkpoints."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
import torch as th
from sb3_contrib import RecurrentPPO
from sb3_era_envs import TINY_NET, ReachTargetEnv

from sb3_era import (
    ERAA2C,
    ERAPPO,
    ERASAC,
    ERATQC,
    ERAActorCriticPolicy,
    ERACrossQ,
    ERARecurrentActorCriticPolicy,
    ERASACPolicy,
)
from sb3_era.zoo_resume import CHECKPOINT_FOLDER, ResumeCheckpointCallback, read_checkpoint_state

OFF_POLICY_KNOBS = dict(
    target_entropy_per_dim=-0.7,
    log_std_min=-6.0,
    log_std_max=0.5,
    action_distribution="tanh",
    delta=0.2,
    learn_delta=True,
    floor="state",
    floor_momentum=0.05,
)
ON_POLICY_KNOBS = dict(
    target_entropy=-2.0,
    log_std_min=-6.0,
    log_std_max=0.5,
    action_distribution="tanh",
    delta=0.1,
    state_dependent_std=True,
)
DISCRETE_KNOBS = dict(min_entropy=0.4, softmax_tau=5.0)
CASES = [
    (ERASAC, OFF_POLICY_KNOBS, dict(learning_starts=32, batch_size=16)),
    (ERAPPO, DISCRETE_KNOBS, dict(n_steps=32, batch_size=16, n_epochs=1)),
    (
        ERATQC,
        dict(OFF_POLICY_KNOBS, floor="batch", delta=0.0, learn_delta=False),
        dict(learning_starts=32, batch_size=16),
    ),
    (ERACrossQ, OFF_POLICY_KNOBS, dict(learning_starts=32, batch_size=16)),
    (ERAPPO, ON_POLICY_KNOBS, dict(n_steps=32, batch_size=16, n_epochs=1)),
    (ERAA2C, dict(ON_POLICY_KNOBS, action_distribution="truncated"), dict(n_steps=8)),
    (
        ERAPPO,
        dict(min_entropy=0.4, softmax_construction="mixture"),
        dict(n_steps=32, batch_size=16, n_epochs=1),
    ),
    (ERAA2C, dict(DISCRETE_KNOBS, softmax_construction="calibrated"), dict(n_steps=8)),
]
# Both ReachTargetEnv and CartPole-v1 observe 4 numbers.
OBS = np.random.default_rng(0).uniform(-1, 1, (64, 4)).astype(np.float32)


@pytest.mark.parametrize(
    ("algo", "knobs", "algo_kwargs"),
    CASES,
    ids=[
        "ERASAC",
        "ERAPPO-Discrete",
        "ERATQC-batch",
        "ERACrossQ",
        "ERAPPO",
        "ERAA2C",
        "ERAPPO-Discrete-mixture",
        "ERAA2C-Discrete-calibrated",
    ],
)
def test_model_save_load_keeps_every_era_knob_and_deterministic_actions(algo, knobs, algo_kwargs, tmp_path):
    env = "CartPole-v1" if "min_entropy" in knobs else ReachTargetEnv()
    model = algo("MlpPolicy", env, policy_kwargs=dict(net_arch=TINY_NET, **knobs), seed=0, **algo_kwargs)
    model.learn(64)
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model")
    era_holder = model.policy.actor if hasattr(model.policy, "actor") else model.policy
    loaded_holder = loaded.policy.actor if hasattr(loaded.policy, "actor") else loaded.policy
    assert loaded_holder.era_kwargs == era_holder.era_kwargs == {**era_holder.era_kwargs, **knobs}
    np.testing.assert_array_equal(
        loaded.predict(OBS, deterministic=True)[0], model.predict(OBS, deterministic=True)[0]
    )
    for name, tensor in model.policy.state_dict().items():
        th.testing.assert_close(loaded.policy.state_dict()[name], tensor)


def test_learned_delta_value_survives_save_and_load(tmp_path):
    model = ERASAC("MlpPolicy", ReachTargetEnv(), learning_starts=32, batch_size=16, learn_delta=True, seed=0)
    model.learn(96)
    delta = model.policy.actor.era.delta.item()
    assert delta != 0.0
    model.save(tmp_path / "model")
    assert ERASAC.load(tmp_path / "model").policy.actor.era.delta.item() == delta


@pytest.mark.parametrize(
    ("policy_class", "knobs"),
    [(ERASACPolicy, OFF_POLICY_KNOBS), (ERAActorCriticPolicy, ON_POLICY_KNOBS)],
    ids=["ERASACPolicy", "ERAActorCriticPolicy"],
)
def test_policy_save_load_keeps_every_era_knob_and_deterministic_actions(policy_class, knobs, tmp_path):
    env = ReachTargetEnv()
    policy = policy_class(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=TINY_NET, **knobs)
    policy.save(tmp_path / "policy.pt")
    loaded = policy_class.load(tmp_path / "policy.pt")
    holder, loaded_holder = (policy.actor, loaded.actor) if hasattr(policy, "actor") else (policy, loaded)
    assert loaded_holder.era_kwargs == holder.era_kwargs
    np.testing.assert_array_equal(
        loaded.predict(OBS, deterministic=True)[0], policy.predict(OBS, deterministic=True)[0]
    )


def test_recurrent_policy_save_load_keeps_deterministic_actions(tmp_path):
    model = RecurrentPPO(
        ERARecurrentActorCriticPolicy,
        ReachTargetEnv(),
        n_steps=32,
        batch_size=16,
        n_epochs=1,
        policy_kwargs=dict(net_arch=TINY_NET, lstm_hidden_size=8, target_entropy_per_dim=-1.0),
        seed=0,
    )
    model.learn(32)
    model.save(tmp_path / "model")
    loaded = RecurrentPPO.load(tmp_path / "model")
    assert loaded.policy.era_kwargs == model.policy.era_kwargs
    starts = np.ones(len(OBS), dtype=bool)
    np.testing.assert_array_equal(
        loaded.predict(OBS, episode_start=starts, deterministic=True)[0],
        model.predict(OBS, episode_start=starts, deterministic=True)[0],
    )


def test_recurrent_discrete_policy_keeps_its_tight_floor_through_save_and_load(tmp_path):
    model = RecurrentPPO(
        ERARecurrentActorCriticPolicy,
        "CartPole-v1",
        n_steps=32,
        batch_size=16,
        n_epochs=1,
        policy_kwargs=dict(
            net_arch=TINY_NET, lstm_hidden_size=8, min_entropy=0.3, softmax_construction="mixture"
        ),
        seed=0,
    )
    model.learn(32)
    model.save(tmp_path / "model")
    loaded = RecurrentPPO.load(tmp_path / "model")
    assert loaded.policy.era_kwargs["softmax_construction"] == "mixture"
    assert loaded.policy.logits_era.construction == "mixture"
    starts = np.ones(len(OBS), dtype=bool)
    np.testing.assert_array_equal(
        loaded.predict(OBS, episode_start=starts, deterministic=True)[0],
        model.predict(OBS, episode_start=starts, deterministic=True)[0],
    )


def test_resume_checkpoint_writes_the_replay_buffer_compressed_and_it_loads_back(tmp_path):
    model = ERASAC(
        ERASACPolicy, "Pendulum-v1", buffer_size=1000, learning_starts=50, batch_size=16,
        policy_kwargs=dict(net_arch=TINY_NET), seed=0,
    )  # fmt: skip
    folder = tmp_path / CHECKPOINT_FOLDER
    folder.mkdir()
    stale = folder / "replay_buffer.pkl"  # what earlier versions wrote
    stale.write_bytes(b"stale")
    model.learn(
        120, callback=ResumeCheckpointCallback(100, str(tmp_path), "Pendulum-v1", total_timesteps=120)
    )
    assert sorted(path.name for path in folder.iterdir()) == [
        "model.zip",
        "replay_buffer.pkl.gz",
        "state.json",
    ]
    assert read_checkpoint_state(tmp_path) == {"num_timesteps": 120, "total_timesteps": 120, "finished": True}

    loaded = ERASAC.load(folder / "model.zip")
    with (
        gzip.open(folder / "replay_buffer.pkl.gz", "rb") as decompressed,
        io.BufferedReader(decompressed) as file,
    ):
        loaded.load_replay_buffer(file)
    assert loaded.replay_buffer.pos == model.replay_buffer.pos == 120
    for name in ("observations", "actions", "rewards", "next_observations", "dones", "timeouts"):
        np.testing.assert_array_equal(getattr(loaded.replay_buffer, name), getattr(model.replay_buffer, name))
