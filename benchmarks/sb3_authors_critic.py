"""Gradient-step throughput of the main job's ``--preset authors`` (2x512, LayerNorm critic, AdamW) vs SB3's SAC.

What the authors' recipe costs per gradient step, against SAC as SB3 ships it (``SAC("MlpPolicy")``: 2x256,
ReLU, Adam, ``ent_coef="auto"``), split into its parts: the 2x512 width, the authors' critic (LayerNorm +
ELU hidden layers, AdamW; ``sb3_era.authors_critic_kwargs()``) on plain SAC (the baseline of
``hyperparams/sac_authors.yml``) and on SAC-ERA. Every model runs ``model.train()`` on one fixed replay
buffer of random transitions (shared), batch 256, same seed; the models are timed interleaved (the order
rotates each repeat) and the medians compared: ratio = throughput / SB3's SAC throughput, and "vs SB3
critic" = throughput / that of the same model with SB3's critic (the price of LayerNorm + ELU + AdamW, and
of each alone on plain SAC).

    python benchmarks/sb3_authors_critic.py
    python benchmarks/sb3_authors_critic.py --device cuda --out benchmarks/results/sb3_authors_critic_cuda.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
from pathlib import Path

import torch as th
from sb3_throughput import VERSIONED_PACKAGES, _fill_replay_buffer, _gradient_steps_per_second, _interleaved
from stable_baselines3 import SAC
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from sb3_era import ERASAC, CriticOptionsSACPolicy, authors_critic_kwargs
from sb3_era.main import PRESETS
from sb3_era.versions import package_versions

BASELINE = "SAC (SB3 default)"
AUTHORS_PRESET = "SAC-ERA (--preset authors)"
# model -> the same model with SB3's critic, for the "vs SB3 critic" column.
SB3_CRITIC_TWIN = {
    "SAC 2x512 + LayerNorm": "SAC 2x512",
    "SAC 2x512 + ELU": "SAC 2x512",
    "SAC 2x512 + AdamW": "SAC 2x512",
    "SAC 2x512 + authors' critic": "SAC 2x512",
    AUTHORS_PRESET: "SAC-ERA 2x512",
}


def _models(args: argparse.Namespace) -> dict[str, OffPolicyAlgorithm]:
    preset = PRESETS["authors"]
    if not preset.authors_critic:
        raise SystemExit(
            "the main job's authors preset no longer uses the authors' critic; update this benchmark"
        )
    common = dict(
        learning_starts=0,
        buffer_size=args.buffer_states,
        batch_size=preset.batch_size,
        learning_rate=preset.learning_rate,
        gamma=preset.gamma,
        tau=preset.tau,
        device=args.device,
        seed=args.seed,
    )
    wide = dict(net_arch=list(preset.net_arch))
    authors = dict(wide, **authors_critic_kwargs())
    # One option of the authors' critic at a time (its optimizer option comes with its weight decay).
    alone = {
        "LayerNorm": dict(critic_layer_norm=True),
        "ELU": dict(critic_activation_fn=authors["critic_activation_fn"]),
        "AdamW": {key: authors[key] for key in ("critic_optimizer_class", "critic_optimizer_kwargs")},
    }
    models: dict[str, OffPolicyAlgorithm] = {
        BASELINE: SAC("MlpPolicy", args.env, **common),
        "SAC 2x512": SAC("MlpPolicy", args.env, policy_kwargs=wide, **common),
        **{
            f"SAC 2x512 + {name}": SAC(
                CriticOptionsSACPolicy, args.env, policy_kwargs=dict(wide, **option), **common
            )
            for name, option in alone.items()
        },
        "SAC 2x512 + authors' critic": SAC(CriticOptionsSACPolicy, args.env, policy_kwargs=authors, **common),
        "SAC-ERA 2x512": ERASAC("MlpPolicy", args.env, policy_kwargs=wide, **common),
        AUTHORS_PRESET: ERASAC("MlpPolicy", args.env, policy_kwargs=authors, **common),
    }
    shared = _fill_replay_buffer(args.env, args.buffer_states, args.device, args.seed)
    for model in models.values():
        model.replay_buffer = shared
        model.set_logger(Logger(folder=None, output_formats=[]))
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--gradient-steps", type=int, default=100, help="gradient steps per timing")
    parser.add_argument("--buffer-states", type=int, default=10_000, help="size of the fixed replay buffer")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sb3_authors_critic.json"))
    args = parser.parse_args()
    th.set_num_threads(args.threads)

    models = _models(args)
    batch_size = PRESETS["authors"].batch_size
    samples = _interleaved(
        {
            name: (lambda model=model: _gradient_steps_per_second(model, args.gradient_steps, batch_size))
            for name, model in models.items()
        },
        args.repeats,
    )
    medians = {name: statistics.median(values) for name, values in samples.items()}
    rows = [
        {
            "model": name,
            "metric": "gradient steps/s",
            "median": medians[name],
            "samples": samples[name],
            "ratio_vs_sb3_sac": medians[name] / medians[BASELINE],
            "ratio_vs_sb3_critic": (
                medians[name] / medians[SB3_CRITIC_TWIN[name]] if name in SB3_CRITIC_TWIN else None
            ),
        }
        for name in samples
    ]

    header = f"{'model':<30} {'gradient steps/s':>17} {'vs SB3 SAC':>11} {'vs SB3 critic':>14}"
    print(f"{args.env}, {args.repeats} interleaved repeats, {args.threads} thread(s), device {args.device}")
    print(header)
    print("-" * len(header))
    for row in rows:
        twin = "" if row["ratio_vs_sb3_critic"] is None else f"{row['ratio_vs_sb3_critic']:.3f}"
        print(f"{row['model']:<30} {row['median']:>17.1f} {row['ratio_vs_sb3_sac']:>11.3f} {twin:>14}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "config": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
        "preset": dataclasses.asdict(PRESETS["authors"]),
        "critic": {key: getattr(value, "__name__", value) for key, value in authors_critic_kwargs().items()},
        "baseline": BASELINE,
        "sb3_critic_twin": SB3_CRITIC_TWIN,
        "results": rows,
        "versions": package_versions(VERSIONED_PACKAGES),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "torch_threads": th.get_num_threads(),
        },
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
