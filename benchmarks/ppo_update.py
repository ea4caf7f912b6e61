"""PPO-ERA's update (``train()``) against PPO's, with the fused training pass and op by op, interleaved per call.

Each model collects one rollout (``--ppo-steps`` env steps of HalfCheetah-v5 by default), then its ``train()``
(``n_epochs`` passes of minibatches over that rollout, SB3's PPO defaults) is timed again and again on it, the
three models taking turns call by call: PPO, PPO-ERA (``--action-distribution``: the truncated normal, the
default, or the tanh Gaussian) with its fused training pass (the distribution's ``fuse_training_pass``, the
default) and PPO-ERA with the same computation recorded op by op. Timing whole ``train()`` calls a few tenths
of a second long, in turn, keeps a drift of the machine's speed out of the ratios, which
``benchmarks/sb3_throughput.py``'s update timings (one rollout and one update per model per repeat) cannot on a
noisy 2-core machine. Ratio = PPO's time / the model's time (its throughput relative to PPO's). Process CPU time,
one thread. Prints a table, writes JSON::

    python benchmarks/ppo_update.py --repeats 15
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger

from sb3_era import ERAPPO
from sb3_era.versions import cpu_model, package_versions

BASELINE = "PPO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--ppo-steps", type=int, default=1024, help="rollout length (n_steps)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--action-distribution", choices=("truncated", "tanh"), default="truncated")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ppo_update.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    common = dict(n_steps=args.ppo_steps, seed=args.seed, device="cpu")
    fused = ERAPPO("MlpPolicy", args.env, action_distribution=args.action_distribution, **common)
    op_by_op = ERAPPO("MlpPolicy", args.env, action_distribution=args.action_distribution, **common)
    op_by_op.policy.action_dist.fuse_training_pass = False
    models = {
        BASELINE: PPO("MlpPolicy", args.env, **common),
        "PPO-ERA fused": fused,
        "PPO-ERA op by op": op_by_op,
    }
    for model in models.values():
        model.set_logger(Logger(folder=None, output_formats=[]))
        model.learn(args.ppo_steps)  # one rollout (and a first update, the warm-up)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(args.repeats):
        names = list(models)
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.process_time()
            models[name].train()
            seconds[name].append(time.process_time() - start)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    paired = {
        name: statistics.median(base / own for base, own in zip(seconds[BASELINE], values, strict=True))
        for name, values in seconds.items()
    }
    minibatches = models[BASELINE].n_epochs * -(-args.ppo_steps // models[BASELINE].batch_size)
    print(
        f"{args.env}, train() on one {args.ppo_steps}-step rollout ({minibatches} minibatches), {args.repeats} repeats"
    )
    print(f"{'model':<18} {'median ms':>10} {'ms / minibatch':>15} {'vs PPO':>7} {'paired':>7}")
    for name, value in median.items():
        print(
            f"{name:<18} {value * 1e3:10.1f} {value * 1e3 / minibatches:15.3f} "
            f"{median[BASELINE] / value:7.3f} {paired[name]:7.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "config": {key: str(value) for key, value in vars(args).items()},
        "machine": {"platform": platform.platform(), "processor": cpu_model()},
        "versions": package_versions(("era-rl", "torch", "numpy", "scipy", "stable-baselines3")),
        "minibatches_per_train": minibatches,
        "median_s": median,
        "ratio_of_medians": {name: median[BASELINE] / value for name, value in median.items()},
        "median_paired_ratio": paired,
        "repeats_s": seconds,
    }
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
