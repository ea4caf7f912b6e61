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


# The on-policy ERA policies' construction errors, message by message: a user reads them to fix a call.
ON_POLICY_BATCH_FLOOR_MESSAGE = (
    "floor='batch': the PPO/A2C ERA policies support floor='state' only. With the state-independent log-std "
    "every state has the same entropy, so the per-state floor already holds the batch mean; with "
    "state_dependent_std=True a batch-level shift (spec 1.4) would change the policy with each minibatch, so "
    "the rollout's log-probabilities (collected in evaluation mode) would not be those of the policy being "
    "updated. Use floor='state' (and learn_delta=True to hold the final policy's entropy at the target)."
)


@pytest.mark.parametrize("action_space", [BOX, spaces.Discrete(3)], ids=str)
def test_on_policy_batch_floor_is_refused_with_the_full_reason(action_space):
    with pytest.raises(ValueError) as error:
        ERAActorCriticPolicy(OBS_SPACE, action_space, _lr, floor="batch", min_entropy=0.5)
    assert str(error.value) == ON_POLICY_BATCH_FLOOR_MESSAGE


@pytest.mark.parametrize(
    "knobs",
    [
        dict(target_entropy=-1.0),
        dict(target_entropy_per_dim=-0.5),
        dict(log_std_min=-5.0),
        dict(log_std_max=0.5),
        dict(action_distribution="tanh"),
        dict(delta=0.5),
        dict(learn_delta=True),
        dict(state_dependent_std=True),
        dict(log_std_min=-5.0, delta=0.5, state_dependent_std=True),
    ],
    ids=lambda knobs: "+".join(knobs),
)
def test_on_policy_discrete_refuses_each_box_knob_by_name(knobs):
    with pytest.raises(ValueError) as error:
        ERAActorCriticPolicy(OBS_SPACE, spaces.Discrete(3), _lr, min_entropy=0.5, **knobs)
    assert str(error.value) == f"{', '.join(knobs)} apply to Box action spaces, not to Discrete(3)"


@pytest.mark.parametrize(
    "knobs",
    [dict(min_entropy=0.5), dict(softmax_tau=5.0), dict(softmax_construction="calibrated")],
    ids=lambda knobs: "+".join(knobs),
)
def test_on_policy_box_refuses_each_discrete_knob(knobs):
    with pytest.raises(ValueError) as error:
        ERAActorCriticPolicy(OBS_SPACE, BOX, _lr, **knobs)
    assert str(error.value) == (
        "min_entropy, softmax_tau and softmax_construction apply to Discrete action spaces, not to "
        "Box(-1.0, 1.0, (3,), float32)"
    )


@pytest.mark.parametrize(
    ("knobs", "interval"),
    [
        (dict(), "(-0.0597, 1.0390]"),  # the paper's map reaches its upper end: a closed interval
        (dict(softmax_tau=6.0), "(-0.2086, 0.8901]"),
        (dict(softmax_construction="mixture"), "(0.0000, 1.0986)"),
    ],
    ids=["paper", "paper-tau", "mixture"],
)
def test_on_policy_discrete_without_min_entropy_states_the_interval_of_its_construction(knobs, interval):
    with pytest.raises(ValueError) as error:
        ERAActorCriticPolicy(OBS_SPACE, spaces.Discrete(3), _lr, **knobs)
    tau = knobs.get("softmax_tau", 4.0)
    construction = knobs.get("softmax_construction", "paper")
    assert str(error.value) == (
        f"ERA for Discrete actions needs min_entropy, the entropy floor (nats); for Discrete(3), "
        f"softmax_construction={construction!r} and softmax_tau={tau} it must lie in {interval}"
    )


def test_on_policy_unsupported_action_space_message_names_both_supported_kinds():
    with pytest.raises(ValueError) as error:
        ERAActorCriticPolicy(OBS_SPACE, spaces.MultiBinary(3), _lr)
    assert (
        str(error.value)
        == "ERA policies support Box (continuous) and Discrete action spaces, got MultiBinary(3)"
    )


@pytest.mark.parametrize("policy_class", OFF_POLICY_CLASSES, ids=lambda c: c.__name__)
def test_off_policy_unknown_floor_is_refused_with_the_allowed_values(policy_class):
    with pytest.raises(ValueError) as error:
        policy_class(OBS_SPACE, BOX, _lr, floor="episode")
    assert str(error.value) == "floor must be one of ('state', 'batch'), got 'episode'"


@pytest.mark.parametrize(
    ("knobs", "given"),
    [
        (dict(delta=0.5), "delta=0.5 and learn_delta=False"),
        (dict(learn_delta=True), "delta=0.0 and learn_delta=True"),
        (dict(delta=0.5, learn_delta=True), "delta=0.5 and learn_delta=True"),
    ],
    ids=["delta", "learn_delta", "both"],
)
@pytest.mark.parametrize("policy_class", OFF_POLICY_CLASSES, ids=lambda c: c.__name__)
def test_off_policy_batch_floor_refuses_a_compensation_with_the_full_reason(policy_class, knobs, given):
    with pytest.raises(ValueError) as error:
        policy_class(OBS_SPACE, BOX, _lr, floor="batch", **knobs)
    assert str(error.value) == (
        f"{given} apply to the per-state floor only; use floor='state' or leave delta=0.0, learn_delta=False"
    )
