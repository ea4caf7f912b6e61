"""Cost of each era_core activation next to the layer it sits on (forward + backward), in one run.

For each case the baseline is the model part the activation follows (an SAC-sized actor MLP, a
classifier's linear head, a Gaussian-policy sampling step), timed interleaved with the same model plus
the ERA activation. Prints a table and writes JSON.

    python benchmarks/core_activations.py                      # CPU
    python benchmarks/core_activations.py --device cuda        # GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.distributions import Normal

from era_core import GaussianERA, SoftmaxERA, TruncatedNormal


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step: Callable[[], None], device: torch.device, iters: int) -> float:
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) / iters


def _compare(
    baseline: Callable[[], None], era: Callable[[], None], device: torch.device, iters: int, repeats: int
) -> dict:
    for step in (baseline, era):  # warm-up
        _time(step, device, max(1, iters // 5))
    base_times, era_times = [], []
    for _ in range(repeats):  # interleaved so drift hits both alike
        base_times.append(_time(baseline, device, iters))
        era_times.append(_time(era, device, iters))
    base, with_era = statistics.median(base_times), statistics.median(era_times)
    return {"baseline_ms": 1e3 * base, "era_ms": 1e3 * with_era, "ratio": with_era / base}


def _actor_case(device: torch.device, batch: int, action_dim: int, hidden: int) -> tuple:
    """SAC actor: MLP -> (mean, pre-activation) -> log-std -> sampled action and its log-prob."""
    body = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()).to(device)
    heads = nn.Linear(hidden, 2 * action_dim).to(device)
    era = GaussianERA(action_dim).to(device)
    obs = torch.randn(batch, 64, device=device)

    def baseline() -> None:  # SB3's SAC actor: clamped log-std, tanh-squashed Gaussian
        mean, log_std = heads(body(obs)).chunk(2, dim=-1)
        dist = Normal(mean, log_std.clamp(-20, 2).exp())
        u = dist.rsample()
        action = torch.tanh(u)
        log_prob = dist.log_prob(u).sum(-1) - torch.log1p(-action.pow(2) + 1e-6).sum(-1)
        (log_prob.mean() + action.sum()).backward()

    def with_era() -> None:  # SAC-ERA actor: ERA log-std, truncated normal on [-1, 1]
        mean, z = heads(body(obs)).chunk(2, dim=-1)
        dist = TruncatedNormal(torch.tanh(mean).clamp(-1 + 1e-6, 1 - 1e-6), era(z).exp())
        action = dist.rsample()
        (dist.log_prob(action).sum(-1).mean() + action.sum()).backward()

    return baseline, with_era


def _classifier_case(device: torch.device, batch: int, features: int, classes: int) -> tuple:
    head = nn.Linear(features, classes).to(device)
    era = SoftmaxERA(classes, min_entropy=1.2 if classes >= 100 else 0.6).to(device)
    x = torch.randn(batch, features, device=device)
    target = torch.randint(0, classes, (batch,), device=device)

    def baseline() -> None:
        nn.functional.cross_entropy(head(x), target).backward()

    def with_era() -> None:
        nn.functional.cross_entropy(era(head(x)), target).backward()

    return baseline, with_era


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/core_activations.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    cases = {
        "SAC actor, batch 256, D=6, 2x256 (tanh-Gaussian vs ERA + truncated)": _actor_case(
            device, 256, 6, 256
        ),
        "SAC actor, batch 256, D=17, 2x512 (tanh-Gaussian vs ERA + truncated)": _actor_case(
            device, 256, 17, 512
        ),
        "linear head 2048->1000, batch 256 (CE vs ERA + CE)": _classifier_case(device, 256, 2048, 1000),
        "linear head 512->10, batch 256 (CE vs ERA + CE)": _classifier_case(device, 256, 512, 10),
    }
    rows = {name: _compare(*fns, device, args.iters, args.repeats) for name, fns in cases.items()}

    name_width = max(map(len, rows))
    print(f"{'case':<{name_width}}  {'baseline ms':>11}  {'ERA ms':>8}  {'ratio':>6}")
    for name, row in rows.items():
        print(
            f"{name:<{name_width}}  {row['baseline_ms']:>11.3f}  {row['era_ms']:>8.3f}  {row['ratio']:>6.3f}"
        )
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "iters": args.iters,
        "repeats": args.repeats,
        "cases": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
