"""RL Baselines3 Zoo integration: registries, shipped hyper-parameter files, samplers, train/enjoy/optimize."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import optuna
import pytest
import torch as th
import yaml
from rl_zoo3 import exp_manager, hyperparams_opt
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.utils import ALGOS
from sb3_contrib import TQC, CrossQ
from stable_baselines3 import A2C, PPO, SAC

import hyperparams
import sb3_era
from sb3_era import zoo
from sb3_era.zoo_samplers import ERA_HYPERPARAMS_CONVERTER, TARGET_ENTROPY_PER_DIM_RANGE

ERA_ALGO_NAMES = ("sac_era", "tqc_era", "crossq_era", "ppo_era", "a2c_era")
ERA_POLICIES = {
    "sac_era": sb3_era.ERASACPolicy,
    "tqc_era": sb3_era.ERATQCPolicy,
    "crossq_era": sb3_era.ERACrossQPolicy,
    "ppo_era": sb3_era.ERAActorCriticPolicy,
    "a2c_era": sb3_era.ERAActorCriticPolicy,
}
STOCK_ALGOS = {"sac_era": SAC, "tqc_era": TQC, "crossq_era": CrossQ, "ppo_era": PPO, "a2c_era": A2C}
GYM_ENTRIES = (
    "Pendulum-v1",
    "HalfCheetah-v5",
    "Hopper-v5",
    "Walker2d-v5",
    "Ant-v5",
    "Humanoid-v5",
    "Swimmer-v5",
)
DM_CONTROL_ENTRIES = (
    "dm_control/dog-run-v0",
    "dm_control/dog-trot-v0",
    "dm_control/dog-walk-v0",
    "dm_control/dog-stand-v0",
    "dm_control/humanoid-run-v0",
    "dm_control/humanoid-walk-v0",
    "dm_control/humanoid-stand-v0",
)
# The baselines of the SAC/TQC ERA files: the same settings and critic, the host's entropy temperature.
BASELINE_FILES = {
    "sac_authors": (SAC, sb3_era.CriticOptionsSACPolicy),
    "tqc_authors": (TQC, sb3_era.CriticOptionsTQCPolicy),
}
REPO_ROOT = Path(__file__).resolve().parents[2]
# Subprocesses: one thread each, no network.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def registered():
    zoo.register_zoo_algorithms()


@pytest.mark.parametrize(
    "module",
    [
        "rl_zoo3.train",
        "rl_zoo3.enjoy",
        "rl_zoo3.load_from_hub",
        "rl_zoo3.plots.all_plots",
        "rl_zoo3.plots.plot_from_file",
        "rl_zoo3.plots.plot_train",
        "rliable.library",
    ],
)
def test_the_zoo_extra_installs_what_rl_zoo3_imports(module):
    # rl-zoo3 imports more than it declares (requests, seaborn, pandas, scipy); era-rl[zoo] declares them.
    importlib.import_module(module)


def test_registration_adds_every_era_algorithm_sampler_and_converter():
    for name in ERA_ALGO_NAMES:
        assert issubclass(ALGOS[name], STOCK_ALGOS[name])
        assert ALGOS[name] is zoo.ERA_ALGOS[name]
        assert name in hyperparams_opt.HYPERPARAMS_SAMPLER
        assert name in hyperparams_opt.HYPERPARAMS_CONVERTER
    # The stock entries stay.
    assert ALGOS["sac"] is SAC
    assert hyperparams_opt.HYPERPARAMS_SAMPLER["sac"] is hyperparams_opt.sample_sac_params


def test_hyperparams_path_finds_every_shipped_file():
    assert {*ERA_ALGO_NAMES, *BASELINE_FILES} <= set(hyperparams.available())
    for name in (*ERA_ALGO_NAMES, *BASELINE_FILES):
        assert hyperparams.path(name).is_file()
        assert hyperparams.path(f"{name}.yml") == hyperparams.path(name)


def test_hyperparams_path_names_the_available_files_for_an_unknown_name():
    with pytest.raises(FileNotFoundError, match=r"available: .*sac_era"):
        hyperparams.path("sac_typo")


@pytest.mark.parametrize("name", ERA_ALGO_NAMES)
def test_hyperparams_file_covers_mujoco_pendulum_and_dm_control(name):
    entries = yaml.safe_load(hyperparams.path(name).read_text())
    assert set(GYM_ENTRIES) | set(DM_CONTROL_ENTRIES) <= set(entries)
    for env_id, entry in entries.items():
        assert entry["ent_coef"] == 0.0, env_id
        assert entry["policy"] == f"sb3_era.{ERA_POLICIES[name].__name__}", env_id
        assert "use_sde" not in entry, env_id
    for env_id in DM_CONTROL_ENTRIES:
        # shimmy's dm-control observations are dicts; the MLP policies need them flat.
        assert entries[env_id]["env_wrapper"] == "gymnasium.wrappers.FlattenObservation"


def _policy_kwargs(entry: dict) -> dict:
    """An entry's ``policy_kwargs`` as rl-zoo3 reads it (a string is evaluated in rl-zoo3's namespace)."""
    policy_kwargs = entry["policy_kwargs"]
    return eval(policy_kwargs, vars(exp_manager)) if isinstance(policy_kwargs, str) else policy_kwargs


AUTHORS_ENTRIES = ("default", "HalfCheetah-v5", "Hopper-v5", "Humanoid-v5", "dm_control/dog-run-v0")


@pytest.mark.parametrize("name", ["sac_era", "tqc_era", "sac_authors", "tqc_authors"])
def test_sac_and_tqc_files_hold_the_authors_settings_and_critic(name):
    entries = yaml.safe_load(hyperparams.path(name).read_text())
    era = {
        "target_entropy_per_dim": -0.5,
        "log_std_min": -8.0,
        "log_std_max": 0.0,
        "action_distribution": "truncated",
    }
    tqc = {"n_quantiles": 25, "n_critics": 2}
    for env_id in AUTHORS_ENTRIES:
        entry = entries[env_id]
        assert _policy_kwargs(entry) == {
            "net_arch": [512, 512],
            **(tqc if name.startswith("tqc") else {}),
            **(era if name.endswith("_era") else {}),
            **sb3_era.authors_critic_kwargs(),
        }
        assert (entry["batch_size"], entry["gamma"], entry["tau"], entry["learning_rate"]) == (
            256,
            0.99,
            0.005,
            3e-4,
        )
        assert (entry["train_freq"], entry["gradient_steps"]) == (1, 2)
        assert (entry["learning_starts"], entry["buffer_size"]) == (5000, 1_000_000)
        assert entry["ent_coef"] == (0.0 if name.endswith("_era") else "auto")


@pytest.mark.parametrize("name", BASELINE_FILES)
def test_baseline_file_mirrors_its_era_file(name):
    baseline = yaml.safe_load(hyperparams.path(name).read_text())
    era = yaml.safe_load(hyperparams.path(name.replace("_authors", "_era")).read_text())
    assert baseline.keys() == era.keys()
    policy = BASELINE_FILES[name][1]
    for env_id, entry in baseline.items():
        assert entry["policy"] == f"sb3_era.{policy.__name__}", env_id
        assert entry["ent_coef"] == "auto", env_id
        settings = {
            key: value for key, value in entry.items() if key not in ("policy", "ent_coef", "policy_kwargs")
        }
        assert settings == {key: era[env_id][key] for key in settings}, env_id
        assert settings.keys() == era[env_id].keys() - {"policy", "ent_coef", "policy_kwargs"}, env_id


def _experiment(name: str, env_id: str, log_folder: Path, **overrides) -> ExperimentManager:
    return ExperimentManager(
        argparse.Namespace(),
        name,
        env_id,
        str(log_folder),
        eval_freq=-1,
        hyperparams={"buffer_size": 1000, **overrides}
        if name in ("sac_era", "tqc_era", "crossq_era")
        else overrides,
        verbose=0,
        device="cpu",
        config=str(hyperparams.path(name)),
    )


def _check_critic(model, env_id: str) -> None:
    """The authors' critic (LayerNorm, ELU, AdamW) on every task but Pendulum, which keeps SB3's."""
    layer_types = {type(module) for module in model.policy.critic.qf0}
    if env_id == "Pendulum-v1":
        assert th.nn.LayerNorm not in layer_types
        assert type(model.policy.critic.optimizer) is th.optim.Adam
    else:
        assert {th.nn.LayerNorm, th.nn.ELU} <= layer_types
        assert type(model.policy.critic.optimizer) is th.optim.AdamW
        assert model.policy.critic.optimizer.defaults["weight_decay"] == 1e-4
    assert type(model.policy.actor.optimizer) is th.optim.Adam


@pytest.mark.parametrize("name", ERA_ALGO_NAMES)
def test_every_gymnasium_entry_builds_its_era_model(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory
    for env_id in GYM_ENTRIES:
        model, _ = _experiment(name, env_id, tmp_path).setup_experiment()
        assert isinstance(model, STOCK_ALGOS[name])
        assert isinstance(model.policy, ERA_POLICIES[name])
        assert model.ent_coef == 0.0
        assert model.policy_kwargs["target_entropy_per_dim"] == -0.5
        if name in ("sac_era", "tqc_era"):
            _check_critic(model, env_id)
        model.get_env().close()


@pytest.mark.parametrize("name", BASELINE_FILES)
def test_every_gymnasium_entry_of_a_baseline_file_builds_the_stock_algorithm(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    algo, policy = BASELINE_FILES[name]
    for env_id in GYM_ENTRIES:
        model, _ = ExperimentManager(
            argparse.Namespace(),
            algo.__name__.lower(),
            env_id,
            str(tmp_path),
            eval_freq=-1,
            hyperparams={"buffer_size": 1000},
            verbose=0,
            device="cpu",
            config=str(hyperparams.path(name)),
        ).setup_experiment()
        assert type(model) is algo
        assert type(model.policy) is policy
        assert isinstance(model.log_ent_coef, th.Tensor)  # ent_coef="auto": the temperature is learned
        _check_critic(model, env_id)
        model.get_env().close()


@pytest.mark.parametrize("name", ERA_ALGO_NAMES)
def test_sampler_is_the_stock_one_plus_target_entropy_with_ent_coef_pinned(name):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    sampled = hyperparams_opt.HYPERPARAMS_SAMPLER[name](
        trial, 1, 1, {"using_her_replay_buffer": False, "her_kwargs": {}}
    )
    assert sampled["ent_coef"] == 0.0
    assert "ent_coef" not in trial.params  # not a search dimension
    low, high = TARGET_ENTROPY_PER_DIM_RANGE
    assert low <= sampled["target_entropy_per_dim"] <= high
    assert sampled["target_entropy_per_dim"] == trial.params["target_entropy_per_dim"]
    # Stored trials load back (`--trial-id`) to exactly the sampled arguments.
    assert ERA_HYPERPARAMS_CONVERTER[name](trial.params) == sampled
    # The sampled arguments build the ERA algorithm, with the target reaching the policy.
    model = ALGOS[name](ERA_POLICIES[name], "Pendulum-v1", device="cpu", **sampled)
    assert model.policy_kwargs["target_entropy_per_dim"] == sampled["target_entropy_per_dim"]
    assert isinstance(model.policy, ERA_POLICIES[name])


def test_stock_samplers_shared_by_era_samplers_are_used_unchanged():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    stock_trial, era_trial = (
        study.ask(),
        optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask(),
    )
    extra = {"using_her_replay_buffer": False, "her_kwargs": {}}
    stock = hyperparams_opt.sample_sac_params(stock_trial, 1, 1, dict(extra))
    era = hyperparams_opt.HYPERPARAMS_SAMPLER["sac_era"](era_trial, 1, 1, dict(extra))
    assert {key: era[key] for key in stock} == stock


@pytest.mark.parametrize(
    ("command", "given", "expected_extra"),
    [
        (
            "train",
            ["--algo", "sac_era", "--env", "Hopper-v5"],
            ["--conf-file", str(hyperparams.path("sac_era"))],
        ),
        ("train", ["--algo=ppo_era"], ["--conf-file", str(hyperparams.path("ppo_era"))]),
        ("train", ["--algo", "sac_era", "-conf", "my.yml"], []),
        ("train", ["--algo", "sac_era", "--conf", "my.yml"], []),
        ("train", ["--algo", "sac", "--env", "Hopper-v5"], []),
        (
            "train",
            ["--algo", "sac", "--conf-file", "sac_authors"],
            ["--conf-file", str(hyperparams.path("sac_authors"))],
        ),
        (
            "optimize",
            ["--algo", "tqc", "-conf=tqc_authors.yml", "-optimize"],
            ["--conf-file", str(hyperparams.path("tqc_authors"))],
        ),
        ("train", ["--algo", "sac", "--conf-file", str(hyperparams.path("sac_authors"))], []),
        ("train", ["--algo", "sac", "--conf-file", "sac_unknown"], []),
        (
            "optimize",
            ["--algo", "tqc_era"],
            ["--conf-file", str(hyperparams.path("tqc_era")), "--optimize-hyperparameters"],
        ),
        ("optimize", ["--algo", "sac", "-optimize"], []),
        ("enjoy", ["--algo", "sac_era"], ["--folder", "logs"]),
        ("enjoy", ["--algo", "sac_era", "-f", "mine"], []),
        ("enjoy", ["--algo", "sac"], []),
    ],
)
def test_zoo_arguments_add_era_defaults_only_where_missing(command, given, expected_extra):
    assert zoo.zoo_arguments(command, given) == [*given, *expected_extra]


def test_zoo_arguments_reject_an_unknown_command():
    with pytest.raises(ValueError, match="unknown command 'fit'"):
        zoo.zoo_arguments("fit", [])


def test_dm_control_ids_get_shimmy_or_a_clear_error(monkeypatch):
    monkeypatch.setattr(zoo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"era-rl\[dmc\].*mujoco<4"):
        zoo.zoo_arguments("train", ["--algo", "sac_era", "--env", "dm_control/dog-run-v0"])
    monkeypatch.setattr(zoo.importlib.util, "find_spec", lambda name: object())
    arguments = zoo.zoo_arguments("train", ["--algo", "sac_era", "--env", "dm_control/dog-run-v0"])
    assert arguments[-2:] == ["--gym-packages", "shimmy"]


def test_main_rejects_an_unknown_command_and_prints_usage(capsys):
    with pytest.raises(SystemExit, match="unknown command 'fit'"):
        zoo.main(["fit"])
    with pytest.raises(SystemExit) as exit_info:
        zoo.main(["--help"])
    assert exit_info.value.code == 0
    assert "train" in capsys.readouterr().out


def _train(tmp_path: Path, algo: str, *extra: str) -> Path:
    zoo.main(
        [
            "train",
            "--algo",
            algo,
            "--env",
            "Pendulum-v1",
            "--eval-freq",
            "-1",
            "--seed",
            "0",
            "--num-threads",
            "1",
            "--device",
            "cpu",
            "-f",
            str(tmp_path / "logs"),
            *extra,
        ]
    )
    return tmp_path / "logs" / algo / "Pendulum-v1_1" / "Pendulum-v1.zip"


def test_train_sac_era_then_enjoy_it(tmp_path, capsys):
    # rl-zoo3 overrides policy_kwargs as a whole: this is how a user changes the ERA target from the CLI.
    new_policy_kwargs = "policy_kwargs:dict(net_arch=[64, 64], target_entropy_per_dim=-0.3)"
    model_path = _train(tmp_path, "sac_era", "-n", "200", "-params", "learning_starts:100", new_policy_kwargs)
    model = sb3_era.ERASAC.load(model_path)
    assert model.ent_coef == 0.0
    assert model.policy.actor.era.target_entropy == pytest.approx(-0.3)
    capsys.readouterr()
    enjoy_options = ["--no-render", "-n", "210", "--num-threads", "1", "--device", "cpu"]
    zoo.main(
        ["enjoy", "--algo", "sac_era", "--env", "Pendulum-v1", "-f", str(tmp_path / "logs"), *enjoy_options]
    )
    assert "Mean reward:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("algo", "overrides"),
    [
        ("sac_era", ["-n", "120", "-params", "learning_starts:100"]),
        ("ppo_era", ["-n", "64", "-params", "n_envs:1", "n_steps:64", "batch_size:32", "n_epochs:1"]),
    ],
)
def test_params_overrides_an_era_knob_of_the_shipped_file(tmp_path, algo, overrides):
    # The shipped files put target_entropy_per_dim in policy_kwargs; rl-zoo3's -params gives it at the top level.
    model = ALGOS[algo].load(
        _train(tmp_path, algo, *overrides, "target_entropy_per_dim:-1.25", "log_std_min:-6")
    )
    era = model.policy.actor.era if algo == "sac_era" else model.policy.log_std_era
    assert era.target_entropy == pytest.approx(-1.25)  # Pendulum: one action dimension
    assert era.log_std_min == -6.0


@pytest.mark.parametrize(
    ("algo", "overrides"),
    [
        ("tqc_era", ["-n", "150", "-params", "learning_starts:100", "policy_kwargs:dict(net_arch=[64, 64])"]),
        (
            "crossq_era",
            ["-n", "150", "-params", "learning_starts:100", "policy_kwargs:dict(net_arch=[64, 64])"],
        ),
        ("ppo_era", ["-n", "128", "-params", "n_envs:1", "n_steps:64", "batch_size:32", "n_epochs:1"]),
        ("a2c_era", ["-n", "128", "-params", "n_envs:2"]),
    ],
)
def test_train_every_other_era_algorithm(tmp_path, algo, overrides):
    model = ALGOS[algo].load(_train(tmp_path, algo, *overrides))
    assert isinstance(model.policy, ERA_POLICIES[algo])
    assert model.num_timesteps >= 128
    # The trained, reloaded policy keeps its Gaussian entropy above the ERA floor in every state.
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(256)])) * 10.0
    model.policy.set_training_mode(False)
    with th.no_grad():
        measured = getattr(model.policy, "actor", model.policy).entropy_stats(obs)
    assert measured["entropy_floor"] == pytest.approx(
        -0.5
    )  # Pendulum: one action dimension, the default -D/2
    assert measured["gaussian_entropy_min"] >= measured["entropy_floor"] - 1e-5


def test_stock_rl_zoo3_trains_with_the_dotted_era_policy(tmp_path):
    command = [sys.executable, "-m", "rl_zoo3.train", "--algo", "sac", "--env", "Pendulum-v1"]
    command += [
        "--conf-file",
        str(hyperparams.path("sac_era")),
        "-n",
        "150",
        "-params",
        "learning_starts:100",
    ]
    command += [
        "--eval-freq",
        "-1",
        "--seed",
        "0",
        "--num-threads",
        "1",
        "--device",
        "cpu",
        "-f",
        str(tmp_path),
    ]
    subprocess.run(command, check=True, cwd=tmp_path, env=SUBPROCESS_ENV, capture_output=True, timeout=300)
    model = SAC.load(tmp_path / "sac" / "Pendulum-v1_1" / "Pendulum-v1.zip")
    assert isinstance(model.policy, sb3_era.ERASACPolicy)
    assert model.ent_coef == 0.0
    assert model.policy.actor.era_kwargs["target_entropy_per_dim"] == -0.5


def test_sb3_era_zoo_trains_stock_sac_with_the_shipped_baseline_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # MountainCarContinuous-v0 is not listed: the `default` entry (the authors' settings and critic) applies.
    command = ["train", "--algo", "sac", "--env", "MountainCarContinuous-v0", "--conf-file", "sac_authors"]
    command += ["-n", "150", "-params", "learning_starts:100", "buffer_size:1000", "--eval-freq", "-1"]
    command += ["--seed", "0", "--num-threads", "1", "--device", "cpu", "-f", str(tmp_path / "logs")]
    zoo.main(command)
    model = SAC.load(
        tmp_path / "logs" / "sac" / "MountainCarContinuous-v0_1" / "MountainCarContinuous-v0.zip"
    )
    assert type(model.policy) is sb3_era.CriticOptionsSACPolicy
    assert model.policy.critic_options == sb3_era.authors_critic_kwargs()
    assert model.policy_kwargs["net_arch"] == [512, 512]
    _check_critic(model, "MountainCarContinuous-v0")
    assert model.num_timesteps == 150


def _optimize_worker(tmp_path: Path, storage: str, seed: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "sb3_era.zoo", "optimize", "--algo", "sac_era", "--env", "Pendulum-v1"]
    command += ["-n", "150", "-params", "learning_starts:100", "--n-trials", "1", "--n-evaluations", "1"]
    command += ["--eval-episodes", "1", "--sampler", "random", "--pruner", "none", "--no-optim-plots"]
    command += ["--storage", storage, "--study-name", "era-two-workers", "--seed", str(seed)]
    command += ["--num-threads", "1", "--device", "cpu", "-f", str(tmp_path / "logs")]
    command += ["--optimization-log-path", str(tmp_path / f"trials_{seed}")]
    return subprocess.Popen(
        command, cwd=tmp_path, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _check_two_workers_share_one_study(tmp_path: Path, storage: str, optuna_storage) -> None:
    workers = [_optimize_worker(tmp_path, storage, seed) for seed in (1, 2)]
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output
    study = optuna.load_study(study_name="era-two-workers", storage=optuna_storage)
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert sorted(trial.number for trial in trials) == [0, 1]
    for trial in trials:
        assert "ent_coef" not in trial.params
        # Each worker saved its trial's best model: the sampled target reached the ERA actor.
        (model_path,) = tmp_path.glob(f"trials_*/trial_{trial.number}/best_model.zip")
        model = sb3_era.ERASAC.load(model_path)
        action_dim = gym.spec("Pendulum-v1").make().action_space.shape[0]
        assert model.policy.actor.era.target_entropy == pytest.approx(
            trial.params["target_entropy_per_dim"] * action_dim
        )


def test_optimize_two_workers_share_one_journal_study(tmp_path):
    journal = tmp_path / "study.log"
    _check_two_workers_share_one_study(
        tmp_path,
        str(journal),
        optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
    )


def test_optimize_two_workers_share_one_sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    # Create the schema once, so the two workers do not race to create the tables.
    optuna.create_study(storage=url, study_name="era-two-workers", direction="maximize")
    _check_two_workers_share_one_study(tmp_path, url, url)
