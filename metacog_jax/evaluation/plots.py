"""PNG figures for reports: reliability diagrams and labelled bar charts.

Uses matplotlib's object API with the Agg canvas (no pyplot global state, no
display needed). Files are written to a temporary name and renamed, so a
crash never leaves a half-written PNG behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from metacog_jax import artifacts
from metacog_jax.evaluation import metrics


def _save_png(fig: Figure, path: str | os.PathLike) -> str:
    FigureCanvasAgg(fig)
    with artifacts.atomic_output(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    return str(path)


def reliability_diagram(
    conf: Sequence[float] | np.ndarray,
    correct: Sequence[float] | np.ndarray,
    path: str | os.PathLike,
    title: str,
    n_bins: int = 10,
) -> str:
    """Write a reliability diagram (accuracy per confidence bin) as a PNG.

    Bars show accuracy in each of ``n_bins`` equal-width bins (the ECE bins
    of METHOD.md), dots the mean confidence in the bin, the dashed diagonal
    perfect calibration; each non-empty bin is annotated with its count and
    the title carries the ECE and N.

    Args:
      conf: ``(N,)`` P(correct) in [0, 1] (validated).
      correct: ``(N,)`` 0/1.
      path: output ``.png`` path (parent folders are created).
      title: first title line.
      n_bins: number of bins.

    Returns:
      ``path`` as a string.
    """
    conf_np = metrics.validate_confidences(conf, "conf")
    correct_np = metrics.validate_binary(correct, "correct")
    if len(conf_np) != len(correct_np):
        raise ValueError(f"conf has {len(conf_np)} values, correct has {len(correct_np)}")
    count, mean_conf, acc = (np.asarray(a) for a in metrics.calibration_bins(conf_np, correct_np, n_bins=n_bins))
    ece_value = float(metrics.ece(conf_np, correct_np, n_bins=n_bins))

    width = 1.0 / n_bins
    left = np.arange(n_bins) * width
    nonempty = count > 0
    fig = Figure(figsize=(4.8, 4.8))
    ax = fig.add_subplot()
    ax.bar(left[nonempty], acc[nonempty], width=width, align="edge",
           color="#4C72B0", edgecolor="black", alpha=0.8, label="accuracy")
    ax.plot(mean_conf[nonempty], acc[nonempty], "o", color="#DD8452", label="(mean confidence, accuracy)")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    # Counts run along the top, above the 1.0 line, so they never collide with bars or dots.
    for x, c in zip(left[nonempty], count[nonempty]):
        ax.annotate(f"{int(round(c))}", (x + width / 2, 1.03), ha="center", fontsize=6)
    ax.annotate("n per bin:", (0.01, 1.085), fontsize=6, color="dimgray")
    ax.axhline(1.0, color="lightgray", linewidth=0.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.12)
    ax.set_xlabel("confidence (P(correct))")
    ax.set_ylabel("accuracy in bin")
    ax.set_title(f"{title}\nECE = {ece_value:.3f}, N = {len(conf_np)}", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=6, frameon=False)
    return _save_png(fig, path)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    path: str | os.PathLike,
    title: str,
    ylabel: str,
    errors: Sequence[float] | None = None,
    counts: Sequence[int] | None = None,
    ylim: tuple[float, float] | None = (0.0, 1.0),
) -> str:
    """Write a bar chart PNG (one bar per label, optional error bars and counts).

    Args:
      labels: bar labels.
      values: bar heights (NaN bars are left empty).
      path: output ``.png`` path.
      title, ylabel: axis text.
      errors: optional symmetric error-bar half-widths (e.g. standard errors).
      counts: optional ``n`` annotated under each label.
      ylim: y-axis limits, or None for automatic.

    Returns:
      ``path`` as a string.
    """
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels but {len(values)} values")
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(4.0, 0.8 * len(labels) + 1.5), 4.0))
    ax = fig.add_subplot()
    err = None if errors is None else np.nan_to_num(np.asarray(errors, dtype=float))
    ax.bar(x, np.asarray(values, dtype=float), yerr=err, capsize=3, color="#4C72B0", edgecolor="black")
    tick_labels = list(labels) if counts is None else [f"{l}\n(n={n})" for l, n in zip(labels, counts)]
    ax.set_xticks(x, tick_labels, rotation=30 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center",
                  fontsize=8)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return _save_png(fig, path)
