"""Learning-curve plots for the main job (matplotlib's Agg canvas: no display, no global backend change)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_learning_curves"]

Curve = tuple[Sequence[float], Sequence[float]]


def plot_learning_curves(
    curves: Mapping[str, Sequence[Curve]],
    path: str | Path,
    title: str = "",
    xlabel: str = "environment steps",
    ylabel: str = "mean evaluation return",
) -> Path:
    """
    Plot evaluation returns against training steps, one colour per algorithm, and save the figure.

    Each seed is drawn as a thin line; when an algorithm has several seeds evaluated at the same steps, their
    mean is drawn on top as a thick line.

    :param curves: algorithm label -> one ``(steps, returns)`` pair per seed.
    :param path: where to write the image (the format follows the suffix, e.g. ``.png``).
    :param title: figure title.
    :param xlabel: x-axis label.
    :param ylabel: y-axis label.
    :return: the path written.
    :raises ValueError: when there is nothing to plot or a curve's steps and returns differ in length.
    """
    if not any(len(runs) for runs in curves.values()):
        raise ValueError("no learning curve to plot: every algorithm has an empty list of runs")
    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, runs) in enumerate(curves.items()):
        color = colors[index % len(colors)]
        for steps, returns in runs:
            if len(steps) != len(returns):
                raise ValueError(f"{label}: {len(steps)} steps but {len(returns)} returns in one curve")
        single = len(runs) == 1
        for steps, returns in runs:
            axes.plot(
                steps,
                returns,
                color=color,
                alpha=1.0 if single else 0.3,
                linewidth=1.8 if single else 1.0,
                marker="o" if single else None,
                markersize=3,
                label=label if single else None,
            )
        same_steps = len({tuple(steps) for steps, _ in runs}) == 1
        if not single and same_steps:
            mean = np.mean([np.asarray(returns, dtype=float) for _, returns in runs], axis=0)
            axes.plot(
                runs[0][0], mean, color=color, linewidth=2.2, label=f"{label} (mean of {len(runs)} seeds)"
            )
        elif not single:
            axes.plot([], [], color=color, label=f"{label} ({len(runs)} seeds)")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
