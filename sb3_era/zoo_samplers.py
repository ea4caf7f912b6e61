"""
Optuna samplers and converters for the ERA algorithms in RL Baselines3 Zoo.

Each sampler is rl-zoo3's own sampler for the base algorithm plus ``target_entropy_per_dim``. The target is
returned as a top-level argument of the ERA algorithm (``ERASAC(target_entropy_per_dim=...)``) because
rl-zoo3 replaces ``policy_kwargs`` wholesale with the sampled network. ``ent_coef`` is pinned to 0.0: the
ERA floor replaces the entropy bonus, so the stock samplers' ``ent_coef`` dimension is not searched.

A converter turns the parameters stored in an Optuna trial back into algorithm arguments (used by
``--storage ... --study-name ... --trial-id``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from rl_zoo3 import hyperparams_opt

__all__ = [
    "ERA_HYPERPARAMS_CONVERTER",
    "ERA_HYPERPARAMS_SAMPLER",
    "TARGET_ENTROPY_PER_DIM_RANGE",
    "convert_crossq_era_params",
    "sample_a2c_era_params",
    "sample_crossq_era_params",
    "sample_ppo_era_params",
    "sample_sac_era_params",
    "sample_tqc_era_params",
]

# Searched range of the per-dimension target entropy (nats). It holds the paper's example (-0.5) and the
# authors' sweep default (+0.25), and stays below the largest feasible value 0.5 * ln(2 pi e) ~ 1.42 for
# the default log_std_max = 0.
TARGET_ENTROPY_PER_DIM_RANGE = (-1.5, 0.5)

# CrossQ critic widths searched (rl-zoo3's crossq.yml uses 2048 on MuJoCo); the actor keeps 2x256.
CROSSQ_CRITIC_WIDTHS = (256, 1024, 2048)
CROSSQ_ACTOR_NET_ARCH = [256, 256]

Sampler = Callable[[optuna.Trial, int, int, dict], dict[str, Any]]


class _TrialWithFixedParams:
    """
    A view of an ``optuna.Trial`` that answers ``suggest_*`` for some names with fixed values.

    The fixed names are not recorded in the trial, so they are not a search dimension; every other
    attribute is the wrapped trial's.

    :param trial: The trial to wrap.
    :param fixed: Parameter name -> value returned instead of a suggestion.
    """

    def __init__(self, trial: optuna.Trial, fixed: dict[str, Any]):
        self._trial = trial
        self._fixed = fixed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> float:
        return self._fixed[name] if name in self._fixed else self._trial.suggest_float(name, *args, **kwargs)

    def suggest_int(self, name: str, *args: Any, **kwargs: Any) -> int:
        return self._fixed[name] if name in self._fixed else self._trial.suggest_int(name, *args, **kwargs)

    def suggest_categorical(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return (
            self._fixed[name]
            if name in self._fixed
            else self._trial.suggest_categorical(name, *args, **kwargs)
        )


def _suggest_target_entropy_per_dim(trial: optuna.Trial) -> float:
    low, high = TARGET_ENTROPY_PER_DIM_RANGE
    return trial.suggest_float("target_entropy_per_dim", low, high)


def _with_era(stock_sampler: Sampler) -> Sampler:
    """The stock sampler with ``ent_coef`` pinned to 0.0 and ``target_entropy_per_dim`` added."""

    def sample(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
        era_trial = _TrialWithFixedParams(trial, {"ent_coef": 0.0})
        hyperparams = stock_sampler(era_trial, n_actions, n_envs, additional_args)  # type: ignore[arg-type]
        hyperparams["ent_coef"] = 0.0
        hyperparams["target_entropy_per_dim"] = _suggest_target_entropy_per_dim(trial)
        return hyperparams

    sample.__name__ = f"{stock_sampler.__name__.removesuffix('_params')}_era_params"
    sample.__doc__ = f"rl-zoo3's ``{stock_sampler.__name__}`` with ``ent_coef = 0.0`` and a sampled ``target_entropy_per_dim``."
    return sample


def _with_ent_coef_zero(stock_converter: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable:
    """The stock converter, returning ``ent_coef = 0.0`` as the ERA samplers do."""

    def convert(sampled_params: dict[str, Any]) -> dict[str, Any]:
        return {**stock_converter(sampled_params), "ent_coef": 0.0}

    convert.__name__ = f"{stock_converter.__name__}_era"
    return convert


sample_sac_era_params = _with_era(hyperparams_opt.sample_sac_params)
sample_tqc_era_params = _with_era(hyperparams_opt.sample_tqc_params)
sample_ppo_era_params = _with_era(hyperparams_opt.sample_ppo_params)
sample_a2c_era_params = _with_era(hyperparams_opt.sample_a2c_params)


def convert_crossq_era_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """
    Turn CrossQ-ERA trial parameters into ``ERACrossQ`` arguments.

    :param sampled_params: ``one_minus_gamma``, ``batch_size_pow``, ``learning_rate``, ``train_freq``,
        ``policy_delay``, ``critic_width`` and ``target_entropy_per_dim``.
    :return: keyword arguments for ``ERACrossQ``; one gradient step per env step (``gradient_steps =
        train_freq``), as CrossQ has no target network to refresh.
    """
    hyperparams = dict(sampled_params)
    hyperparams["gamma"] = 1 - hyperparams.pop("one_minus_gamma")
    hyperparams["batch_size"] = 2 ** hyperparams.pop("batch_size_pow")
    hyperparams["gradient_steps"] = hyperparams["train_freq"]
    critic_width = hyperparams.pop("critic_width")
    hyperparams["policy_kwargs"] = {
        "net_arch": {"pi": list(CROSSQ_ACTOR_NET_ARCH), "qf": [critic_width, critic_width]}
    }
    hyperparams["ent_coef"] = 0.0
    return hyperparams


def sample_crossq_era_params(
    trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict
) -> dict[str, Any]:
    """
    Sampler for CrossQ-ERA (rl-zoo3 ships none for CrossQ): SAC's ranges without ``tau`` (CrossQ has no
    target network) and with batches of at least 64 (batch renormalisation needs them), plus the actor
    delay, the critic width and ``target_entropy_per_dim``.

    :param trial: The Optuna trial.
    :param n_actions: Action dimension (unused; part of rl-zoo3's sampler signature).
    :param n_envs: Number of environments (unused; part of rl-zoo3's sampler signature).
    :param additional_args: rl-zoo3's extra arguments (unused).
    :return: keyword arguments for ``ERACrossQ``.
    """
    one_minus_gamma = trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True)
    batch_size_pow = trial.suggest_int("batch_size_pow", 6, 11)
    learning_rate = trial.suggest_float("learning_rate", 1e-5, 0.002, log=True)
    train_freq = trial.suggest_int("train_freq", 1, 10)
    policy_delay = trial.suggest_int("policy_delay", 1, 5)
    critic_width = trial.suggest_categorical("critic_width", list(CROSSQ_CRITIC_WIDTHS))
    trial.set_user_attr("gamma", 1 - one_minus_gamma)
    trial.set_user_attr("batch_size", 2**batch_size_pow)
    return convert_crossq_era_params(
        {
            "one_minus_gamma": one_minus_gamma,
            "batch_size_pow": batch_size_pow,
            "learning_rate": learning_rate,
            "train_freq": train_freq,
            "policy_delay": policy_delay,
            "critic_width": critic_width,
            "target_entropy_per_dim": _suggest_target_entropy_per_dim(trial),
        }
    )


ERA_HYPERPARAMS_SAMPLER: dict[str, Sampler] = {
    "sac_era": sample_sac_era_params,
    "tqc_era": sample_tqc_era_params,
    "crossq_era": sample_crossq_era_params,
    "ppo_era": sample_ppo_era_params,
    "a2c_era": sample_a2c_era_params,
}

ERA_HYPERPARAMS_CONVERTER: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "sac_era": _with_ent_coef_zero(hyperparams_opt.convert_offpolicy_params),
    "tqc_era": _with_ent_coef_zero(hyperparams_opt.convert_offpolicy_params),
    "crossq_era": convert_crossq_era_params,
    "ppo_era": _with_ent_coef_zero(hyperparams_opt.convert_onpolicy_params),
    "a2c_era": _with_ent_coef_zero(hyperparams_opt.convert_onpolicy_params),
}
