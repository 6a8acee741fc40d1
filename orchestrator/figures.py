"""Figures of a trial and of a sweep, drawn with matplotlib's Agg backend (no display needed).

Every trial gets the reference's three panels over training steps (DESIGN section 1):

    Sparsity                  density, log y
    Regularisation strength   lambda, linear y
    Validation cross-entropy  val/ce, linear y, dashed line at the target

with a dotted vertical line at the reset step on every panel. A sweep overlays its trials on the same panels and
plots the frontier: final density (log x) against final val CE, feasible trials marked apart from the others.

Each function saves a PNG and returns the ``matplotlib.figure.Figure`` so tests can inspect the axes. Lines that
carry meaning have a gid: ``"target"``, ``"reset"``, and ``"curve"`` for the data.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from orchestrator.results import as_float  # None / non-numbers -> NaN (a gap in a curve)

PANELS = (  # (metric, panel title, y label, y scale)
    ("density", "Sparsity", "density (kept edges)", "log"),
    ("lambda", "Regularisation strength", "λ", "linear"),
    ("val/ce", "Validation cross-entropy", "val CE (nats/token)", "linear"),
)


def _series(rows: list[dict], key: str, *, positive: bool = False) -> tuple[list[float], list[float]]:
    """(steps, values) sorted by step; on a log axis non-positive values become gaps."""
    pts = sorted(((as_float(r.get("step")), as_float(r.get(key))) for r in rows), key=lambda p: p[0])
    xs = [s for s, _ in pts if math.isfinite(s)]
    ys = [v if not (positive and v <= 0) else math.nan for s, v in pts if math.isfinite(s)]
    return xs, ys


def _target_of(rows: list[dict]) -> float | None:
    """The trial's target from its rows (constant per trial; the last finite value wins)."""
    for r in reversed(rows):
        t = as_float(r.get("target"))
        if math.isfinite(t):
            return t
    return None


def _panels(title: str = "", legend_width: float = 0.0) -> tuple[Figure, list]:
    """Three stacked panels; ``legend_width`` inches of room on the right for an outside legend."""
    width = 8 + legend_width
    fig = Figure(figsize=(width, 8.5))  # fixed margins: constrained layout doubles the time of a figure
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True, gridspec_kw=dict(left=0.88 / width, right=1 - (0.24 + legend_width) / width,
                                                           bottom=0.06,
                                                           top=0.90 if "\n" in title else 0.93, hspace=0.22))
    for ax, (_, name, ylabel, scale) in zip(axes, PANELS, strict=True):
        ax.set_title(name, loc="left", fontsize=10)
        ax.set_ylabel(ylabel)
        ax.set_yscale(scale)
        ax.grid(True, which="major", alpha=0.3)
    axes[-1].set_xlabel("training step")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig, list(axes)


def _draw(axes: list, rows: list[dict], *, target: float | None, reset_at: int | None, color=None,
          label: str | None = None, lw: float = 1.4) -> None:
    for ax, (key, _, _, scale) in zip(axes, PANELS, strict=True):
        xs, ys = _series(rows, key, positive=scale == "log")
        (line,) = ax.plot(xs, ys, color=color, lw=lw, label=label if key == "density" else None)
        line.set_gid("curve")
        color = line.get_color()  # the same colour on every panel
        if reset_at is not None:
            ax.axvline(reset_at, ls=":", color=color if label else "0.3", lw=1.2, gid="reset")
    if target is not None and math.isfinite(target):
        axes[2].axhline(target, ls="--", color=color if label else "0.2", lw=1.0, gid="target",
                        label=None if label else f"target {target:.3f}")


def _save(fig: Figure, path) -> Figure:
    """Write the PNG atomically (a half-written figure never replaces a good one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)
    return fig


def trial_figure(rows: list[dict], path, *, target: float | None, reset_at: int | None,
                 title: str = "") -> Figure:
    """The three reference panels of one trial. ``target`` None = taken from the rows' ``target``."""
    if target is None:
        target = _target_of(rows)
    fig, axes = _panels(title)
    _draw(axes, rows, target=target, reset_at=reset_at)
    if not rows:
        axes[1].text(0.5, 0.5, "no evaluations recorded", transform=axes[1].transAxes, ha="center",
                     va="center", color="0.4", gid="empty")
    if axes[2].get_legend_handles_labels()[0]:
        axes[2].legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def overlay_figure(evals: dict[str, list[dict]], path, *, reset_at: dict[str, int | None] | None = None,
                   labels: dict[str, str] | None = None, title: str = "") -> Figure:
    """All trials on the same three panels: one colour per trial; its target dashed and reset dotted in it."""
    outside = len(evals) > 5  # many trials: the legend goes right of the panels, off the curves
    fig, axes = _panels(title, legend_width=3.2 if outside else 0.0)
    reset_at, labels = reset_at or {}, labels or {}
    palette = _palette(len(evals))
    for i, (tid, rows) in enumerate(evals.items()):
        _draw(axes, rows, target=_target_of(rows), reset_at=reset_at.get(tid), color=palette[i],
              label=labels.get(tid, str(tid)), lw=1.2)
    if outside:
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, borderaxespad=0,
                       ncol=1 if len(evals) <= 24 else 2)
    elif evals:
        axes[0].legend(loc="best", fontsize=7)
    return _save(fig, path)


def _palette(n: int) -> list:
    from matplotlib import colormaps

    name = "tab10" if n <= 10 else "tab20"
    cmap = colormaps[name]
    return [cmap(i % cmap.N) for i in range(max(n, 1))]


def frontier_figure(trials: list[dict], path, *, labels: dict[str, str] | None = None, title: str = "") -> Figure:
    """Final density (log x) against final val CE per trial; feasible trials filled, the others hollow/crossed.

    When the trials' targets differ, the y axis is the final violation (val CE - target, 0 = on target) so
    trials with different targets are comparable; otherwise it is val CE with the common target dashed.
    Failed trials without a finite density are listed in the legend only.
    """
    labels = labels or {}
    fig = Figure(figsize=(7.5, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots(gridspec_kw=dict(left=0.12, right=0.97, bottom=0.1, top=0.93))
    targets = {round(t, 9) for t in (as_float(r.get("target")) for r in trials) if math.isfinite(t)}
    relative = len(targets) > 1
    styles = {  # kind -> (marker, face colour, edge colour, legend label)
        "feasible": ("o", "tab:green", "tab:green", "feasible"),
        "infeasible": ("X", "tab:orange", "tab:orange", "infeasible"),
        "stopped": ("s", "none", "tab:blue", "stopped early"),
        "failed": ("v", "none", "tab:red", "failed"),
    }
    points: dict[str, list[tuple[float, float, str]]] = {k: [] for k in styles}
    seen: list[str] = []
    for r in trials:
        kind = trial_kind(r)
        seen += [kind] if kind not in seen else []
        d, ce, t = as_float(r.get("final/density")), as_float(r.get("final/val_ce")), as_float(r.get("target"))
        y = ce - t if relative else ce
        if math.isfinite(d) and d > 0 and math.isfinite(y):
            points[kind].append((d, y, labels.get(r.get("trial_id"), str(r.get("trial_id")))))
    for kind, pts in points.items():
        if not pts:  # an empty scatter on a log axis breaks the tick locator
            continue
        marker, face, edge, _ = styles[kind]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, s=60, facecolors=face,
                   edgecolors=edge, linewidths=1.5, zorder=3, gid=f"trial:{kind}")
        for d, y, name in pts:
            ax.annotate(name, (d, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if not any(points.values()):
        ax.set_xlim(1e-3, 1.0)
        ax.text(0.5, 0.5, "no trial reached a final density", transform=ax.transAxes, ha="center",
                color="0.4", gid="empty")
    ax.set_xscale("log")
    ax.set_xlabel("final density (kept edges, log)")
    if relative:
        ax.set_ylabel("final violation: val CE - target (nats)")
        ax.axhline(0.0, ls="--", color="0.3", lw=1.0, gid="target")
    else:
        ax.set_ylabel("final val CE (nats/token)")
        if targets:
            ax.axhline(next(iter(targets)), ls="--", color="0.3", lw=1.0, gid="target")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "density vs validation CE", loc="left", fontsize=10)
    if seen:  # every kind present is in the legend, drawn or not
        handles = [Line2D([], [], ls="", marker=styles[k][0], markersize=8, markerfacecolor=styles[k][1],
                          markeredgecolor=styles[k][2], markeredgewidth=1.5, label=styles[k][3]) for k in seen]
        ax.legend(handles=handles, loc="best", fontsize=8)
    return _save(fig, path)


def trial_kind(row: dict) -> str:
    """``feasible`` | ``infeasible`` | ``stopped`` | ``failed`` from a trials-table row."""
    status = row.get("status")
    if status == "failed":
        return "failed"
    if status == "stopped":
        return "stopped"
    return "feasible" if row.get("feasible") is True else "infeasible"
