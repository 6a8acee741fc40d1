"""A live, readable sweep table on the driver's terminal: one row per trial with its status, step, lambda,
density and val/ce against the target. Replaces Ray Tune's verbose default reporter (``verbose=0``)."""

from __future__ import annotations

import math
import sys
import time

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

_STYLE = {"RUNNING": "cyan", "TERMINATED": "green", "ERROR": "red", "PENDING": "dim", "PAUSED": "yellow"}
_WORD = {"RUNNING": "running", "TERMINATED": "done", "ERROR": "error", "PENDING": "pending", "PAUSED": "paused"}


class SweepProgress(Callback):
    def __init__(self, name: str, n_trials: int, console: Console | None = None, live: bool | None = None):
        self.name, self.n_trials = name, n_trials
        self.console = console
        self.live_enabled = live
        self.rows: dict[str, dict] = {}
        self.status: dict[str, str] = {}
        self.retries: dict[str, int] = {}
        self.slots: dict[str, list[float]] = {}  # trial id -> [start, end] seen by the driver (slot time)
        self.started = time.time()
        self._live: Live | None = None
        self._last_print = 0.0

    # --- Ray Tune callback hooks -------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        self.slots.setdefault(trial.trial_id, [time.time(), math.nan])
        self._sync(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.rows[trial.trial_id] = result
        self._sync(trials)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.retries[trial.trial_id] = self.retries.get(trial.trial_id, 0) + 1
        self._sync(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial.trial_id)
        self._sync(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial.trial_id)
        self._sync(trials)

    def _end(self, trial_id: str) -> None:
        if trial_id in self.slots:
            self.slots[trial_id][1] = time.time()

    def on_experiment_end(self, trials, **info):
        self._sync(trials, force=True)
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __getstate__(self):  # Tune pickles its callbacks into the experiment state: keep no file handles
        state = self.__dict__.copy()
        state.update(console=None, _live=None, live_enabled=None)
        return state

    def get_state(self) -> dict:  # kept in Tune's experiment state, so a resumed sweep keeps counting
        return {"retries": dict(self.retries), "slots": {k: list(v) for k, v in self.slots.items()}}

    def set_state(self, state: dict) -> None:
        self.retries = dict(state.get("retries", {}))
        self.slots = {k: list(v) for k, v in state.get("slots", {}).items()}

    # --- rendering ------------------------------------------------------------------------------------
    def _sync(self, trials, force: bool = False) -> None:
        if self.console is None:
            self.console = Console(stderr=True)
        if self.live_enabled is None:
            self.live_enabled = sys.stderr.isatty()
        for t in trials:
            self.status[t.trial_id] = t.status
        if self.live_enabled:
            if self._live is None:
                self._live = Live(self.table(), console=self.console, refresh_per_second=2, transient=False)
                self._live.start()
            self._live.update(self.table())
        elif force or time.time() - self._last_print > 30:  # not a terminal: a plain line every 30 s
            self._last_print = time.time()
            done = sum(s in ("TERMINATED", "ERROR") for s in self.status.values())
            self.console.print(f"[{self.name}] {done}/{self.n_trials} trials done, "
                               f"{sum(s == 'RUNNING' for s in self.status.values())} running, "
                               f"{time.time() - self.started:.0f} s")

    def table(self) -> Table:
        done = sum(s in ("TERMINATED", "ERROR") for s in self.status.values())
        t = Table(title=f"sweep {self.name}: {done}/{self.n_trials} done, {time.time() - self.started:.0f} s",
                  title_justify="left")
        for col in ("trial", "status", "step", "lambda", "density", "val/ce", "target", "violation"):
            t.add_column(col, justify="left" if col in ("trial", "status") else "right")
        for tid, status in self.status.items():
            r = self.rows.get(tid, {})
            retry = f" (retry {self.retries[tid]})" if self.retries.get(tid) else ""
            shown = "failed" if r.get("status") == "failed" else _WORD.get(status, status.lower())
            style = "red" if shown == "failed" else _STYLE.get(status, "")
            t.add_row(tid.rsplit("_", 1)[-1], f"[{style}]{shown}{retry}[/]", _fmt(r.get("step"), "d"), _fmt(r.get("lambda"), ".3g"),
                      _fmt(r.get("density"), ".4f"), _fmt(r.get("val/ce"), ".4f"), _fmt(r.get("target"), ".4f"),
                      _fmt(r.get("violation"), "+.4f"))
        return t


def _fmt(v, spec: str) -> str:
    if v is None:
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def pretrain_with_progress(cfg, *, quiet: bool = False):
    """The base model of ``cfg`` from the cache, or pretrained now with a progress bar."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from trainables.pretrain import get_base

    if quiet:
        return get_base(cfg)
    with Progress(TextColumn("pretraining base model"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("pretrain", total=cfg.pretrain.steps, loss=float("nan"))

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, loss=loss)

        base = get_base(cfg, progress=progress)
    Console(stderr=True).print(f"base model: val/ce {base.val_ce:.4f} nats/byte ({base.path})")
    return base
