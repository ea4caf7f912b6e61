"""Bad input fails at construction with an error that says what is allowed; entropy bonuses warn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium import spaces
from sb3_era_envs import TINY_NET, ReachTargetEnv
from stable_baselines3 import SAC

from sb3_era import (
    ERAPPO,
    ERASAC,
    ERAActorCriticPolicy,
    ERACrossQPolicy,
    ERAEntropyCallback,
    ERASACPolicy,
    ERATQCPolicy,
)

OBS_SPACE = spaces.Box(-1.0, 1.0, (4,), np.float32)
BOX = spaces.Box(-1.0, 1.0, (3,), np.float32)
OFF_POLICY_CLASSES = [ERASACPolicy, ERATQCPolicy, ERACrossQPolicy]


def _lr(_: float) -> float:
    return 1e-3


@pytest.mark.parametrize(
    "policy_class", [*OFF_POLICY_CLASSES, ERAActorCriticPolicy], ids=lambda c: c.__name__
)
def test_gsde_raises_a_clear_value_error(policy_class):
    with pytest.raises(ValueError, match="gSDE"):
        policy_class(OBS_SPACE, BOX, _lr, use_sde=True)


def test_gsde_through_the_algorithm_raises_a_clear_value_error():
    with pytest.raises(ValueError, match="gSDE"):
        ERASAC("MlpPolicy", ReachTargetEnv(), use_sde=True)


@pytest.mark.parametrize("policy_class", OFF_POLICY_CLASSES, ids=lambda c: c.__name__)
def test_off_policy_unsupported_action_spaces_name_the_supported_one(policy_class):
    with pytest.raises(ValueError, match=r"support Box \(continuous\) action spaces"):
        policy_class(OBS_SPACE, spaces.Discrete(3), _lr)
    with pytest.raises(ValueError, match="bounded Box"):
        policy_class(OBS_SPACE, spaces.Box(-np.inf, np.inf, (2,), np.float32), _lr)


@pytest.mark.parametrize("action_space", [spaces.MultiDiscrete([2, 3]), spaces.MultiBinary(3)], ids=str)
def test_on_policy_unsupported_action_spaces_name_the_supported_ones(action_space):
    with pytest.raises(ValueError, match=r"Box \(continuous\) and Discrete"):
        ERAActorCriticPolicy(OBS_SPACE, action_space, _lr)


@pytest.mark.parametrize(
    "policy_class", [*OFF_POLICY_CLASSES, ERAActorCriticPolicy], ids=lambda c: c.__name__
)
def test_infeasible_target_entropy_raises_the_era_core_error_at_construction(policy_class):
    with pytest.raises(ValueError, match="largest feasible target"):
        policy_class(OBS_SPACE, BOX, _lr, target_entropy_per_dim=2.0)


def test_infeasible_or_missing_discrete_min_entropy_raises_with_the_feasible_interval():
    with pytest.raises(ValueError, match="feasible interval"):
        ERAActorCriticPolicy(OBS_SPACE, spaces.Discrete(3), _lr, min_entropy=5.0)
    with pytest.raises(ValueError, match=r"needs min_entropy.*must lie in"):
        ERAActorCriticPolicy(OBS_SPACE, spaces.Discrete(3), _lr)


@pytest.mark.parametrize(
    ("construction", "interval"), [("mixture", r"\(0.0000, 1.0986\)"), ("calibrated", r"\(0.0000, 1.0986\)")]
)
def test_tight_discrete_floor_raises_with_its_own_feasible_interval(construction, interval):
    with pytest.raises(ValueError, match=rf"feasible interval is {interval}"):
        ERAActorCriticPolicy(
            OBS_SPACE, spaces.Discrete(3), _lr, min_entropy=1.1, softmax_construction=construction
        )
    with pytest.raises(ValueError, match=rf"must lie in {interval}"):
        ERAActorCriticPolicy(OBS_SPACE, spaces.Discrete(3), _lr, softmax_construction=construction)
    with pytest.raises(ValueError, match="construction='mixture' has neither"):
        ERAActorCriticPolicy(
            OBS_SPACE,
            spaces.Discrete(3),
            _lr,
            min_entropy=0.5,
            softmax_tau=5.0,
            softmax_construction="mixture",
        )


@pytest.mark.parametrize(
    ("policy_class", "action_space", "kwargs", "message"),
    [
        (ERASACPolicy, BOX, dict(target_entropy=-1.0, target_entropy_per_dim=-0.5), "not both"),
        (ERASACPolicy, BOX, dict(action_distribution="beta"), "action_distribution must be one of"),
        (ERASACPolicy, BOX, dict(floor="episode"), "floor must be one of"),
        (ERASACPolicy, BOX, dict(floor="batch", learn_delta=True), "per-state floor only"),
        (
            ERAActorCriticPolicy,
            BOX,
            dict(min_entropy=0.5),
            "min_entropy, softmax_tau and softmax_construction apply to Discrete",
        ),
        (
            ERAActorCriticPolicy,
            BOX,
            dict(softmax_construction="mixture"),
            "min_entropy, softmax_tau and softmax_construction apply to Discrete",
        ),
        (
            ERAActorCriticPolicy,
            spaces.Discrete(3),
            dict(min_entropy=0.5, target_entropy=-1.0),
            "apply to Box",
        ),
    ],
    ids=[
        "two-targets",
        "distribution",
        "floor",
        "batch-delta",
        "min_entropy-box",
        "construction-box",
        "target-discrete",
    ],
)
def test_invalid_era_arguments_raise_at_construction(policy_class, action_space, kwargs, message):
    with pytest.raises(ValueError, match=message):
        policy_class(OBS_SPACE, action_space, _lr, **kwargs)


def test_top_level_knobs_reach_the_policy():
    model = ERASAC("MlpPolicy", ReachTargetEnv(), target_entropy_per_dim=-1.0, action_distribution="tanh")
    assert model.policy.actor.era.target_entropy == -3.0
    assert model.policy_kwargs["action_distribution"] == "tanh"
    assert ERAPPO("MlpPolicy", ReachTargetEnv(), target_entropy=-2.0).policy.entropy_floor() == -2.0


@pytest.mark.parametrize("ent_coef", ["auto", 0.1])
def test_era_algorithm_with_an_entropy_bonus_warns_about_double_counting(ent_coef):
    with pytest.warns(UserWarning, match="double-counts entropy"):
        ERASAC("MlpPolicy", ReachTargetEnv(), ent_coef=ent_coef)


def test_plain_sb3_algorithm_with_era_policy_and_auto_ent_coef_warns_through_the_callback():
    model = SAC(
        ERASACPolicy,
        ReachTargetEnv(),
        ent_coef="auto",
        learning_starts=8,
        policy_kwargs=dict(net_arch=TINY_NET),
    )
    with pytest.warns(UserWarning, match="double-counts entropy"):
        model.learn(16, callback=ERAEntropyCallback())


def test_era_algorithms_do_not_warn_with_their_default_ent_coef():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ERASAC("MlpPolicy", ReachTargetEnv())
        ERAPPO("MlpPolicy", ReachTargetEnv())


def test_callback_refuses_a_policy_without_era():
    model = SAC("MlpPolicy", ReachTargetEnv(), policy_kwargs=dict(net_arch=TINY_NET))
    with pytest.raises(ValueError, match="needs an ERA policy"):
        model.learn(8, callback=ERAEntropyCallback())
