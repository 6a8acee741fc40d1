"""Figures: the three reference panels per trial, the sweep overlay and the density-vs-CE frontier."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.colors import to_rgba

from orchestrator import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(n=10, *, target=2.3, d0=0.2, every=20):
    return [{"step": i * every, "density": d0 * 0.7**i, "lambda": 10.0 * i, "val/ce": target + 0.01 * (-1) ** i,
             "target": target} for i in range(n)]


def _lines(ax, gid):
    return [ln for ln in ax.get_lines() if ln.get_gid() == gid]


def _png_ok(path):
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 1000


def test_trial_figure_panels_target_and_reset(tmp_path):
    rows = _rows()
    fig = figures.trial_figure(rows, tmp_path / "t.png", target=2.3, reset_at=100, title="t0")
    assert _png_ok(tmp_path / "t.png")
    dens, lam, ce = fig.axes
    assert [ax.get_yscale() for ax in (dens, lam, ce)] == ["log", "linear", "linear"]
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["Sparsity", "Regularisation strength",
                                                             "Validation cross-entropy"]
    assert dens.get_shared_x_axes().joined(dens, ce)
    (target,) = _lines(ce, "target")
    assert list(target.get_ydata()) == [2.3, 2.3] and target.get_linestyle() == "--"
    assert not _lines(dens, "target") and not _lines(lam, "target")
    for ax in fig.axes:
        (reset,) = _lines(ax, "reset")
        assert list(reset.get_xdata()) == [100, 100] and reset.get_linestyle() == ":"
    (curve,) = _lines(dens, "curve")
    np.testing.assert_allclose(curve.get_ydata(), [r["density"] for r in rows])
    np.testing.assert_allclose(_lines(ce, "curve")[0].get_xdata(), [r["step"] for r in rows])


def test_trial_figure_target_from_rows_no_reset_and_gaps(tmp_path):
    rows = _rows(target=1.8)[::-1]  # out of order: drawn sorted by step
    rows[0]["density"] = 0.0  # not drawable on a log axis: a gap, not an error
    rows[1]["val/ce"] = None
    fig = figures.trial_figure(rows, tmp_path / "t.png", target=None, reset_at=None)
    dens, lam, ce = fig.axes
    assert list(_lines(ce, "target")[0].get_ydata()) == [1.8, 1.8]
    assert not any(_lines(ax, "reset") for ax in fig.axes)
    x = _lines(dens, "curve")[0].get_xdata()
    assert list(x) == sorted(x)
    y = _lines(dens, "curve")[0].get_ydata()
    assert math.isnan(y[-1]) and np.isfinite(y[:-1]).all()
    assert math.isnan(_lines(ce, "curve")[0].get_ydata()[-2])


def test_trial_figure_without_rows(tmp_path):
    fig = figures.trial_figure([], tmp_path / "t.png", target=None, reset_at=50, title="failed")
    assert _png_ok(tmp_path / "t.png")
    assert not _lines(fig.axes[2], "target") and len(_lines(fig.axes[0], "reset")) == 1


def test_overlay_one_colour_per_trial(tmp_path):
    evals = {"a": _rows(target=2.3), "b": _rows(target=2.35, d0=0.1), "c": _rows(target=2.4, d0=0.05)}
    labels = {"a": "A k_i=10", "b": "B k_i=30", "c": "C k_i=100"}
    fig = figures.overlay_figure(evals, tmp_path / "o.png", reset_at={"b": 60}, labels=labels)
    assert _png_ok(tmp_path / "o.png")
    dens, lam, ce = fig.axes
    assert dens.get_yscale() == "log"
    curves = _lines(dens, "curve")
    assert len(curves) == 3 and len({c.get_color() for c in curves}) == 3
    assert [t.get_text() for t in dens.get_legend().get_texts()] == list(labels.values())
    targets = _lines(ce, "target")
    assert sorted(t.get_ydata()[0] for t in targets) == [2.3, 2.35, 2.4]
    for t, c in zip(targets, _lines(ce, "curve"), strict=True):  # each target dashed in its trial's colour
        assert to_rgba(t.get_color()) == to_rgba(c.get_color()) and t.get_linestyle() == "--"
    (reset,) = _lines(lam, "reset")
    assert reset.get_xdata()[0] == 60 and to_rgba(reset.get_color()) == to_rgba(curves[1].get_color())


def _trial(tid, status, feasible, density, ce, target=2.0):
    return {"trial_id": tid, "status": status, "feasible": feasible, "final/density": density,
            "final/val_ce": ce, "target": target}


def _points(ax, kind):
    out = []
    for coll in ax.collections:
        if coll.get_gid() == f"trial:{kind}":
            out += [tuple(p) for p in coll.get_offsets()]
    return out


def test_frontier_marks_feasible(tmp_path):
    trials = [_trial("a", "completed", True, 0.01, 1.99), _trial("b", "completed", True, 0.03, 1.95),
              _trial("c", "completed", False, 0.002, 2.2), _trial("d", "failed", None, None, float("nan"))]
    fig = figures.frontier_figure(trials, tmp_path / "f.png")
    assert _png_ok(tmp_path / "f.png")
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert sorted(_points(ax, "feasible")) == [(0.01, 1.99), (0.03, 1.95)]
    assert _points(ax, "infeasible") == [(0.002, 2.2)]
    assert _points(ax, "failed") == []  # no finite point to draw
    assert list(_lines(ax, "target")[0].get_ydata()) == [2.0, 2.0]
    assert {t.get_text() for t in ax.texts} == {"a", "b", "c"}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["feasible", "infeasible", "failed"]


def test_frontier_when_every_trial_failed(tmp_path):
    trials = [_trial("a", "failed", None, None, None), _trial("b", "failed", None, float("nan"), 2.0)]
    fig = figures.frontier_figure(trials, tmp_path / "f.png")
    assert _png_ok(tmp_path / "f.png") and fig.axes[0].get_xscale() == "log"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["failed"]


def test_frontier_uses_violation_when_targets_differ(tmp_path):
    trials = [_trial("a", "completed", True, 0.01, 1.99, target=2.0),
              _trial("b", "completed", False, 0.005, 2.2, target=2.1)]
    fig = figures.frontier_figure(trials, tmp_path / "f.png")
    (ax,) = fig.axes
    (x, y), = _points(ax, "infeasible")
    assert x == 0.005 and math.isclose(y, 0.1)
    assert list(_lines(ax, "target")[0].get_ydata()) == [0.0, 0.0]
    assert "violation" in ax.get_ylabel()
