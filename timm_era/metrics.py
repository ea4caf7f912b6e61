"""Evaluation metrics of a classifier's predictive distribution: accuracy, NLL, calibration and entropy.

Everything is accumulated as sums (and a minimum), so shards evaluated on different processes combine exactly with
one ``all_reduce`` each.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from timm.utils import accuracy
from torch.nn import functional as F

__all__ = ["ECE_BINS", "ClassificationMetrics"]

ECE_BINS = 15


class ClassificationMetrics:
    """Accumulates top-1/top-5 accuracy, NLL, expected calibration error and predictive entropy.

    ``compute()`` returns ``top1`` and ``top5`` (percent, as timm reports them), ``nll`` (mean negative
    log-likelihood of the target, nats), ``ece`` (``num_bins`` equal-width confidence bins, in [0, 1]),
    ``entropy_mean`` / ``entropy_min`` (nats, of ``softmax(logits)``) and ``count``; ``reliability()`` returns the
    per-bin counts, mean confidences and accuracies behind the ECE (a reliability diagram's data).

    :param num_bins: confidence bins of the ECE.
    """

    def __init__(self, num_bins: int = ECE_BINS) -> None:
        if num_bins < 1:
            raise ValueError(f"num_bins must be at least 1, got {num_bins}")
        self.num_bins = num_bins
        self.sums = torch.zeros(5, dtype=torch.float64)  # count, top1, top5, nll, entropy
        self.bins = torch.zeros(
            3, num_bins, dtype=torch.float64
        )  # per bin: confidence sum, correct sum, count
        self.entropy_min = torch.tensor(float("inf"), dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``logits`` ``(N, C)`` (any float dtype) and integer ``target`` ``(N,)``."""
        log_probs = F.log_softmax(logits.detach().double().cpu(), dim=-1)
        target = target.detach().cpu()
        probs = log_probs.exp()
        entropy = -(probs * log_probs).sum(-1)
        confidence, prediction = probs.max(-1)
        correct = (prediction == target).double()
        count = float(len(target))
        top1, top5 = accuracy(
            log_probs, target, topk=(1, min(5, log_probs.shape[-1]))
        )  # percent of the batch
        self.sums += torch.tensor(
            [
                count,
                top1.item() * count / 100.0,
                top5.item() * count / 100.0,
                -log_probs.gather(-1, target[:, None]).sum().item(),
                entropy.sum().item(),
            ],
            dtype=torch.float64,
        )
        index = (confidence * self.num_bins).long().clamp_(max=self.num_bins - 1)
        self.bins[0].index_add_(0, index, confidence)
        self.bins[1].index_add_(0, index, correct)
        self.bins[2].index_add_(0, index, torch.ones_like(correct))
        if len(entropy):
            self.entropy_min = torch.minimum(self.entropy_min, entropy.min())

    def all_reduce(self) -> None:
        """Combine the accumulators of every process of the default process group (no-op without one)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        for tensor, op in ((self.sums, dist.ReduceOp.SUM), (self.bins, dist.ReduceOp.SUM)):
            dist.all_reduce(tensor, op=op)
        dist.all_reduce(self.entropy_min, op=dist.ReduceOp.MIN)

    def compute(self) -> dict[str, float]:
        count = float(self.sums[0])
        if count == 0:
            raise ValueError("no samples were added")
        # ECE = sum over bins of (bin size / N) * |mean confidence - accuracy| = sum |confidence sum - correct sum| / N
        confidence, correct, _ = self.bins
        ece = ((confidence - correct).abs().sum() / count).item()
        return {
            "top1": 100.0 * float(self.sums[1]) / count,
            "top5": 100.0 * float(self.sums[2]) / count,
            "nll": float(self.sums[3]) / count,
            "ece": ece,
            "entropy_mean": float(self.sums[4]) / count,
            "entropy_min": float(self.entropy_min),
            "count": int(count),
        }

    def reliability(self) -> dict[str, list[float]]:
        """Per confidence bin (``num_bins`` equal-width bins of ``[0, 1]``): ``count``, mean ``confidence`` and
        ``accuracy`` (both ``nan`` for an empty bin), and the bin ``edges`` (``num_bins + 1`` values)."""
        confidence, correct, count = self.bins
        if float(count.sum()) == 0:
            raise ValueError("no samples were added")
        return {
            "edges": torch.linspace(0.0, 1.0, self.num_bins + 1, dtype=torch.float64).tolist(),
            "count": count.tolist(),
            "confidence": (confidence / count).tolist(),
            "accuracy": (correct / count).tolist(),
        }
