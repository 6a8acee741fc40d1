"""Metric names and the trial summary: one vocabulary everywhere (Parquet columns, W&B keys, reports).

Per evaluation (``VOCAB``): ``step``, ``val/ce``, ``train/ce`` (mean training-batch CE since the previous
evaluation), ``target``, ``violation`` = val/ce - target (nats; > 0 is over target), ``lambda`` (after this
evaluation's controller update), ``density``, ``lr`` (model learning rate), ``tokens_per_s`` (training tokens
per second since the previous evaluation). The loop adds ``time/train_s`` (cumulative seconds).

Per trial, over the evaluation rows (``summarize``):

    final/density  = density of the last evaluation;  final/val_ce = its val/ce
    tracking_error = mean |violation| over the last half of the evaluations          (nats)
    feasible       = mean violation over the last half <= FEASIBILITY_TOL (0.01 nats)
    objective      = log10(final/density) + 100 * max(0, mean violation of the last half)
                     + 10 if not feasible                                              (lower is better)

The per-evaluation objective reported to Ray is ``objective(density, violation)`` = log10(density) +
100 * max(0, violation). Density is floored at 1e-6 before the log; a non-finite input gives
``BAD_OBJECTIVE`` (1000), worse than any finite trial.
"""

from __future__ import annotations

import math

VOCAB = ["step", "val/ce", "train/ce", "target", "violation", "lambda", "density", "lr", "tokens_per_s"]
FEASIBILITY_TOL = 0.01  # nats
INFEASIBLE_PENALTY = 10.0
VIOLATION_WEIGHT = 100.0
DENSITY_FLOOR = 1e-6
BAD_OBJECTIVE = 1000.0


def objective(density: float, violation: float) -> float:
    """log10(density) + 100 * max(0, violation); lower is better."""
    if not (math.isfinite(density) and math.isfinite(violation)):
        return BAD_OBJECTIVE
    return math.log10(max(density, DENSITY_FLOOR)) + VIOLATION_WEIGHT * max(0.0, violation)


def last_half(rows: list[dict]) -> list[dict]:
    """The last ceil(n/2) rows."""
    return rows[len(rows) // 2 :]


def summarize(rows: list[dict]) -> dict:
    """``{"final/density", "final/val_ce", "tracking_error", "feasible", "objective"}`` of the eval rows."""
    if not rows:
        nan = float("nan")
        return {"final/density": nan, "final/val_ce": nan, "tracking_error": nan, "feasible": False,
                "objective": BAD_OBJECTIVE}
    last = rows[-1]
    viol = [float(r["violation"]) for r in last_half(rows)]
    if all(math.isfinite(v) for v in viol):
        tracking = sum(abs(v) for v in viol) / len(viol)
        mean_v = sum(viol) / len(viol)
    else:
        tracking = mean_v = float("nan")
    feasible = bool(math.isfinite(mean_v) and mean_v <= FEASIBILITY_TOL)
    obj = objective(float(last["density"]), mean_v)
    if not feasible and obj != BAD_OBJECTIVE:
        obj += INFEASIBLE_PENALTY
    return {"final/density": float(last["density"]), "final/val_ce": float(last["val/ce"]),
            "tracking_error": tracking, "feasible": feasible, "objective": obj}
