"""The main job: a tiny SAC-ERA + SAC run writes sane results and a learning-curve plot; bad flags fail early."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch as th
import yaml
from rl_zoo3 import exp_manager
from stable_baselines3 import SAC

import hyperparams
import sb3_era.main as sb3_era_main
from sb3_era import ERASAC, CriticOptionsSACPolicy, ERASACPolicy, authors_critic_kwargs
from sb3_era.main import PRESETS, main
from sb3_era.plotting import plot_learning_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY_RUN = [
    "--env",
    "Pendulum-v1",
    "--timesteps",
    "300",
    "--learning-starts",
    "100",
    "--eval-freq",
    "150",
    "--eval-episodes",
    "1",
    "--device",
    "cpu",
    "--num-threads",
    "1",
]


def test_main_job_writes_results_and_learning_curve_for_era_and_baseline(tmp_path, capsys):
    main([*TINY_RUN, "--baseline", "--seeds", "3", "--output-dir", str(tmp_path)])

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["env"] == "Pendulum-v1"
    assert results["algorithms"] == ["SAC-ERA", "SAC"]
    assert [(run["algorithm"], run["seed"]) for run in results["runs"]] == [("SAC-ERA", 3), ("SAC", 3)]
    for run in results["runs"]:
        assert run["eval_timesteps"] == [150, 300]
        assert all(math.isfinite(value) for value in run["eval_return_mean"])
        # Pendulum's return per episode lies in [-16.3 * 200, 0].
        assert -3300 < run["final_return_mean"] <= 0
        assert run["final_return_mean"] == run["eval_return_mean"][-1]
        assert run["train_wall_time_s"] > 0
        assert run["entropy_states"] == 300
    era, baseline = results["runs"]
    # Pendulum has one action dimension: the floor is the per-dimension target, and it holds.
    assert era["entropy"]["entropy_floor"] == pytest.approx(-0.5)
    assert era["entropy"]["gaussian_entropy_min"] >= era["entropy"]["entropy_floor"] - 1e-5
    assert era["entropy"]["floor_margin"] >= -1e-5
    assert math.isfinite(era["entropy"]["policy_entropy"])
    assert "entropy_floor" not in baseline["entropy"]
    assert math.isfinite(baseline["entropy"]["gaussian_entropy"])
    assert results["summary"]["SAC-ERA"]["final_return_per_seed"] == [era["final_return_mean"]]
    assert results["config"]["era"] == {"target_entropy_per_dim": -0.5, "action_distribution": "truncated"}
    assert results["config"]["sac"]["learning_starts"] == 100
    assert results["config"]["torch_threads"] == 1
    assert {"era-rl", "stable-baselines3", "torch", "gymnasium"} <= set(results["versions"])
    assert results["wall_time_s"] >= era["train_wall_time_s"] + baseline["train_wall_time_s"]

    plot = tmp_path / "learning_curve.png"
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    # The saved ERA model reloads with its knobs.
    model = ERASAC.load(tmp_path / "SAC-ERA" / "seed_3" / "model.zip")
    assert model.policy.actor.era_kwargs["target_entropy_per_dim"] == -0.5
    assert (tmp_path / "SAC-ERA" / "seed_3" / "progress.csv").is_file()
    out = capsys.readouterr().out
    assert "SAC-ERA" in out and str(tmp_path / "results.json") in out


def test_main_job_passes_the_era_flags_to_the_policy(tmp_path):
    flags = ["--env", "Pendulum-v1", "--timesteps", "120", "--learning-starts", "100", "--eval-freq", "200"]
    flags += ["--eval-episodes", "1", "--device", "cpu", "--target-entropy-per-dim", "-1.0"]
    main([*flags, "--action-distribution", "tanh", "--no-progress-bar", "--output-dir", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    (run,) = results["runs"]
    # No evaluation fell inside the budget: the final evaluation is the only point.
    assert run["eval_timesteps"] == [120]
    assert run["entropy"]["entropy_floor"] == pytest.approx(-1.0)
    model = ERASAC.load(tmp_path / "SAC-ERA" / "seed_0" / "model.zip")
    assert model.policy.actor.era_kwargs["action_distribution"] == "tanh"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--timesteps", "0"], "must be a positive integer"),
        (["--timesteps", "500", "--learning-starts", "500"], "must be below --timesteps"),
        (["--timesteps", "2000", "--preset", "authors"], "must be below --timesteps"),  # 5000 random steps
        (["--seeds", "1", "1"], "must be distinct"),
        (["--seeds", "-1"], "non-negative"),
        (["--env", "Hoper-v5"], "unknown environment 'Hoper-v5'"),
        (["--action-distribution", "beta"], "invalid choice"),
        (["--eval-episodes", "0"], "must be a positive integer"),
        (["--num-threads", "0"], "must be a positive integer"),
    ],
)
def test_main_job_rejects_bad_flags_before_training(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([*flags, "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_main_job_names_the_extra_for_dm_control_tasks(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sb3_era_main.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit):
        main(["--env", "dm_control/dog-run-v0", "--output-dir", str(tmp_path)])
    assert "pip install 'era-rl[dmc]'" in capsys.readouterr().err


def test_authors_preset_matches_the_shipped_sac_era_settings():
    default = yaml.safe_load(hyperparams.path("sac_era").read_text())["default"]
    policy_kwargs = eval(default["policy_kwargs"], vars(exp_manager))  # as rl-zoo3 reads it
    authors = dataclasses.asdict(PRESETS["authors"])
    assert list(authors.pop("net_arch")) == policy_kwargs["net_arch"]
    assert authors.pop("authors_critic")
    assert authors_critic_kwargs().items() <= policy_kwargs.items()
    assert authors == {key: default[key] for key in authors}
    assert not PRESETS["quick"].authors_critic


def test_authors_preset_trains_era_and_baseline_with_the_authors_critic(tmp_path):
    flags = ["--preset", "authors", "--baseline", "--timesteps", "130", "--learning-starts", "100"]
    flags += ["--env", "Pendulum-v1", "--eval-freq", "200", "--eval-episodes", "1", "--device", "cpu"]
    main([*flags, "--no-progress-bar", "--output-dir", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["sac"]["authors_critic"] is True
    for label, algo, policy in (("SAC-ERA", ERASAC, ERASACPolicy), ("SAC", SAC, CriticOptionsSACPolicy)):
        model = algo.load(tmp_path / label / "seed_0" / "model.zip", device="cpu")
        assert type(model.policy) is policy
        assert model.policy.critic_options == authors_critic_kwargs()
        assert th.nn.LayerNorm in {type(module) for module in model.policy.critic.qf0}
        assert type(model.policy.critic.optimizer) is th.optim.AdamW
        assert type(model.policy.actor.optimizer) is th.optim.Adam
        assert model.policy_kwargs["net_arch"] == [512, 512]
        assert model.gradient_steps == 2


def test_learning_curve_plot_writes_a_png_for_several_algorithms_and_seeds(tmp_path):
    path = plot_learning_curves(
        {
            "SAC-ERA": [([1, 2, 3], [0.0, 1.0, 2.0]), ([1, 2, 3], [1.0, 2.0, 3.0])],
            "SAC": [([1, 2], [0.5, 0.7])],
        },
        tmp_path / "nested" / "curve.png",
        title="test",
    )
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_learning_curve_plot_rejects_empty_or_ragged_curves(tmp_path):
    with pytest.raises(ValueError, match="no learning curve"):
        plot_learning_curves({"SAC": []}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="2 steps but 3 returns"):
        plot_learning_curves({"SAC": [([1, 2], [1.0, 2.0, 3.0])]}, tmp_path / "b.png")


def test_plain_logs_print_a_line_per_evaluation(tmp_path, capsys):
    main([*TINY_RUN, "--baseline", "--no-progress-bar", "--output-dir", str(tmp_path)])
    lines = [line for line in capsys.readouterr().out.splitlines() if "steps/s" in line]
    assert [line.split("]")[0] + "]" for line in lines] == ["[SAC-ERA seed 0]"] * 2 + ["[SAC seed 0]"] * 2
    assert [int(line.split("steps")[1].split()[0]) for line in lines] == [150, 300] * 2
    for line in lines:
        assert "return" in line and "policy H" in line
