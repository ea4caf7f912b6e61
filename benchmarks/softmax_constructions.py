"""What each softmax ERA construction lets through: the largest probability and the smallest entropy, per floor.

For every class count x floor x construction (``paper`` and ``calibrated`` with the paper's closed-form inverse,
the default, and ``mixture``): :func:`era_core.max_probability`, :func:`era_core.smallest_entropy` (the entropy at
a one-hot input) and an adversarial search for lower entropies in float64: one-hot inputs, random logits at scales
1e-3..1e4, "k classes tied on top" inputs for every k, and Adam minimising the output entropy from random starts.
``margin`` is the searched minimum minus the one-hot value: never negative means no input beat the vertex, which is
the location the construction's floor relies on (proven for ``mixture`` and for the Newton inverse, searched here for
the closed form). Prints a Markdown table and writes JSON.

    python benchmarks/softmax_constructions.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from era_core import SoftmaxERA, max_probability, smallest_entropy, softmax_era_feasible_range

CONSTRUCTIONS = ("paper", "mixture", "calibrated")


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def _feasible(num_classes: int, floor: float, construction: str) -> bool:
    low, high = softmax_era_feasible_range(num_classes, construction=construction)
    return low < floor <= high if construction == "paper" else low < floor < high


def searched_min_entropy(era: SoftmaxERA, num_classes: int, steps: int, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-3, 4, 512, dtype=torch.float64)[:, None]
    random = torch.randn(512, num_classes, generator=gen, dtype=torch.float64) * scales
    tied = (
        torch.tril(torch.ones(num_classes, num_classes, dtype=torch.float64)) * 1e4
    )  # row k: k+1 classes on top
    one_hot = torch.eye(num_classes, dtype=torch.float64)[: min(num_classes, 16)] * 1e4
    best = _entropy(era(torch.cat([random, tied, one_hot]))).min().item()
    x = (torch.randn(128, num_classes, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    optimizer = torch.optim.Adam([x], lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        _entropy(era(x)).sum().backward()
        optimizer.step()
    return min(best, _entropy(era(x.detach())).min().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 10, 100, 1000])
    parser.add_argument("--floors", type=float, nargs="+", default=[0.3, 0.6, 0.98, 1.2])
    parser.add_argument("--steps", type=int, default=300, help="Adam steps of the entropy-minimising search")
    parser.add_argument("--out", default="benchmarks/results/softmax_constructions.json")
    args = parser.parse_args()

    rows = []
    for num_classes in args.classes:
        for floor in args.floors:
            for construction in CONSTRUCTIONS:
                if not _feasible(num_classes, floor, construction):
                    continue
                era = SoftmaxERA(num_classes, floor, construction=construction)
                one_hot = smallest_entropy(num_classes, floor, construction=construction)
                searched = searched_min_entropy(era, num_classes, args.steps)
                rows.append(
                    {
                        "classes": num_classes,
                        "floor": floor,
                        "construction": construction,
                        "max_probability": max_probability(num_classes, floor, construction=construction),
                        "smallest_entropy": one_hot,
                        "searched_min_entropy": searched,
                        "margin": searched - one_hot,
                    }
                )

    print("| classes | floor (nats) | " + " | ".join(f"{c}: max p / min H" for c in CONSTRUCTIONS) + " |")
    print("|---|---|" + "---|" * len(CONSTRUCTIONS))
    for num_classes in args.classes:
        for floor in args.floors:
            cells = []
            for construction in CONSTRUCTIONS:
                match = [
                    r
                    for r in rows
                    if (r["classes"], r["floor"], r["construction"]) == (num_classes, floor, construction)
                ]
                cells.append(
                    f"{match[0]['max_probability']:.3f} / {match[0]['smallest_entropy']:.3f}"
                    if match
                    else "infeasible"
                )
            print(f"| {num_classes} | {floor} | " + " | ".join(cells) + " |")
    worst = {c: min(r["margin"] for r in rows if r["construction"] == c) for c in CONSTRUCTIONS}
    print("smallest margin (searched minimum - one-hot value), per construction: " + ", ".join(
        f"{c} {m:.2e}" for c, m in worst.items()))  # fmt: skip

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump({"config": vars(args), "rows": rows, "smallest_margin": worst}, f, indent=2)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
