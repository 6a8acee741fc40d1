"""The thin Ray Tune function around ``trainables.loop.run`` (the Ray examples' ``mnist_pytorch`` pattern).

Per evaluation it reports the metric vocabulary plus ``objective``; every ``checkpoint_every`` evaluations the
report carries a checkpoint holding the complete trial state, so a retried trial (or a PBT exploit) continues
from it exactly, controller included. The last report adds the per-trial summary and ``status``.

A trial that diverges (val/ce not finite) is not retried: it reports ``status = "failed"`` with the reason and
ends, so the sweep and the choice of the best trial go on.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from trainables import checkpoint as ckpt_io
from trainables import config as trial_config
from trainables import metrics as trial_metrics
from trainables.loop import TrialDiverged
from trainables.loop import run as run_loop

STATE_FILE = "state.pt"


def base_key(cfg: trial_config.TrialConfig) -> str:
    from trainables.pretrain import base_key as key

    return key(cfg)


def trial_fn(config: dict[str, Any], *, trial_tree: dict, bases: dict, checkpoint_every: int | None, cpus: float):
    """``config`` is the flat ``{dotted key: value}`` sample of the sweep's space."""
    started = time.time()
    overrides = {k: v for k, v in config.items() if "." in k}
    cfg = trial_config.resolve(overrides, base=trial_tree)
    if cfg.train.threads is None:
        cfg.train.threads = max(1, int(cpus))
    torch.set_num_threads(cfg.train.threads)
    base = bases.get(base_key(cfg))  # pretrained once by the driver; else built or read from the cache here

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = ckpt_io.load(Path(d) / STATE_FILE)

    n_evals = 0
    last: dict[str, Any] = {}

    def on_eval(metrics: dict, state_fn) -> None:
        nonlocal n_evals, last
        n_evals += 1
        row = dict(metrics)
        row["objective"] = trial_metrics.objective(metrics["density"], metrics["violation"])  # always finite
        last = row
        if checkpoint_every and n_evals % checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as d:
                ckpt_io.save(state_fn(), Path(d) / STATE_FILE)
                tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(row)

    try:
        summary = run_loop(cfg, base=base, resume=resume, on_eval=on_eval)
        status, error = "completed", ""
    except (TrialDiverged, trial_config.ConfigError) as e:  # would fail again on every retry: no retry
        summary = {"final/density": last.get("density", math.nan), "final/val_ce": math.nan,
                   "tracking_error": math.nan, "feasible": False, "objective": trial_metrics.BAD_OBJECTIVE}
        status, error = "failed", " ".join(str(e).split())
    final = {**last, **summary, "status": status, "error": error,
             "time/started_at": started, "time/wall_s": time.time() - started,
             "node_id": _node_id()}
    tune.report(final)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()

