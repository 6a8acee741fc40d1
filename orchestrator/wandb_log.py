"""W&B logging for sweeps: one run per trial, written from the Tune driver by a single background thread.

Ray's stock ``WandbLoggerCallback`` starts one logging actor per trial, finishes every run with exit code 0
(a failed trial looks fine) and re-initialises the run on a retry. This callback replaces it:

* **one W&B run per trial** (``id`` = ``name`` = the trial id, ``group`` = the sweep name), opened at the
  trial's first start and kept open across retries; ``wandb.init(reinit="create_new")`` lets many runs live
  in the driver process, so a trial costs no extra process or actor;
* **config** = the trial's config flattened to dotted keys, minus anything that looks like a secret (a key
  containing key/token/secret/password, or a value containing a secret from the environment);
* **history**: each reported result is logged with ``step=result["step"]`` and the metric vocabulary keys
  (``val/ce``, ``train/ce``, ``target``, ``violation``, ``lambda``, ``density``, ``lr``, ``tokens_per_s``), and
  only when that step is greater than the last step logged for the trial: a trial that Ray restores from a
  checkpoint and that re-reports steps never logs a step twice (the last steps are kept in the Tune
  experiment state, so a resumed sweep keeps the rule);
* **summary** at the end: ``final/density``, ``final/val_ce``, ``tracking_error``, ``feasible``, ``status``
  from the trial's last result (``status`` = "stopped" if a scheduler ended it before the trainable wrote
  one), plus ``retries``; a trial that errors gets ``status = "failed"`` and the error's last line;
* **exit code**: 0, or 1 when the trial errored or its final ``status`` is a failure (see ``is_failure``), so
  the W&B UI shows it as failed.

All W&B calls run in one daemon thread fed by a queue, so ``wandb.init`` (~1 s) never stalls Tune's event
loop; the callback's hooks only enqueue. ``on_experiment_end`` (or ``close()``) waits for the queue to drain.
A W&B error is logged and disables that run; it never fails the sweep.

``mode``: "offline" (files under ``<dir>/wandb/offline-run-*``, upload later with ``wandb sync``), "online",
or "disabled" (nothing at all, W&B not imported). Default: online if ``WANDB_API_KEY`` is set, else offline.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

log = logging.getLogger(__name__)

EVAL_KEYS = ("val/ce", "train/ce", "target", "violation", "lambda", "density", "lr", "tokens_per_s")
SUMMARY_KEYS = ("final/density", "final/val_ce", "tracking_error", "feasible", "status")
FAILED_STATUSES = {"failed", "error", "errored", "diverged", "nan"}
SECRET_RE = re.compile(r"key|token|secret|password|passwd|credential", re.IGNORECASE)
MODES = ("offline", "online", "disabled")


def default_mode() -> str:
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def is_failure(status: Any) -> bool:
    """A final ``status`` that means the trial failed: "failed", "error", ... or "failed: <reason>"."""
    if not isinstance(status, str):
        return False
    s = status.strip().lower()
    return s in FAILED_STATUSES or s.startswith(("failed", "error"))


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look secret (WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, ...)."""
    env = os.environ if environ is None else environ
    return [v for k, v in env.items() if SECRET_RE.search(k) and len(v) >= 8]


def scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


def flat_config(config: Mapping[str, Any], secrets: list[str] | None = None, prefix: str = "") -> dict[str, Any]:
    """Dotted, JSON-able, secret-free view of a (possibly nested) trial config."""
    secrets = secret_values() if secrets is None else secrets
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if SECRET_RE.search(str(k)):
            continue
        if isinstance(v, Mapping):
            out.update(flat_config(v, secrets, key + "."))
            continue
        if isinstance(v, tuple):
            v = list(v)
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            v = repr(v)
        text = json.dumps(v)
        if any(s in text for s in secrets):
            continue
        out[key] = v
    return out


def _number(v: Any) -> Any:
    """Metric values as plain Python scalars (numpy / torch scalars have ``item``)."""
    if hasattr(v, "item"):
        try:
            v = v.item()
        except (TypeError, ValueError):
            return None
    return v if isinstance(v, bool | int | float | str) else None


class WandbRunCallback(Callback):
    """Tune callback: one W&B run per trial. See the module docstring for what is logged and when.

    Args:
        project, entity, group: W&B placement; ``group`` is the sweep name.
        mode: "offline" | "online" | "disabled"; None = online iff ``WANDB_API_KEY`` is set.
        dir: where W&B writes (offline runs land in ``<dir>/wandb/offline-run-*``); default: the cwd.
        tags: W&B tags for every run.
        eval_keys: the result keys logged as history (default: the metric vocabulary).
        name_fn: trial -> run name (default: the trial id).
        config_fn: a trial's sampled config -> the config to log (default: as sampled); the sweep passes one
            that resolves the whole trial config, so each run carries every setting, not only the varied ones.
    """

    def __init__(self, project: str, group: str, *, entity: str | None = None, mode: str | None = None,
                 dir: str | os.PathLike | None = None, tags: list[str] | None = None,
                 eval_keys: tuple[str, ...] = EVAL_KEYS, name_fn: Callable[[Any], str] | None = None,
                 config_fn: Callable[[dict], dict] | None = None):
        mode = mode or default_mode()
        if mode not in MODES:
            raise ValueError(f"wandb mode must be one of {MODES}, got {mode!r}")
        self.project, self.entity, self.group, self.mode = project, entity, group, mode
        self.dir = None if dir is None else str(Path(dir).resolve())
        self.tags = list(tags or [])
        self.eval_keys = tuple(eval_keys)
        self.name_fn = name_fn
        self.config_fn = config_fn
        # driver-side bookkeeping (Tune calls the hooks from one thread)
        self.last_step: dict[str, int] = {}  # trial id -> last step logged
        self.retries: dict[str, int] = {}
        self.finished: set[str] = set()
        self._open: set[str] = set()
        self._resumed: set[str] = set()  # trial ids whose runs were opened by an earlier driver
        # worker-side
        self._runs: dict[str, Any] = {}
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._secrets = secret_values()
        self.errors: list[str] = []

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks into the experiment folder (tuner.pkl, maybe a bucket): leave the thread
        behind, and never the secret values (they are read again from the environment on load)."""
        state = self.__dict__.copy()
        state.update(_runs={}, _queue=None, _thread=None, _secrets=[])
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._queue = queue.Queue()
        self._secrets = secret_values()

    # ---- worker thread -------------------------------------------------------------------------------
    def _submit(self, fn: Callable, *args) -> None:
        if self.mode == "disabled":
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="wandb-runs", daemon=True)
            self._thread.start()
        self._queue.put((fn, args))

    def _work(self) -> None:
        while True:
            fn, args = self._queue.get()
            try:
                if fn is None:
                    return
                fn(*args)
            except Exception as e:  # W&B must never break the sweep
                msg = scrub(f"{getattr(fn, '__name__', fn)}: {type(e).__name__}: {e}", self._secrets)
                self.errors.append(msg)
                log.warning("W&B logging error (run disabled): %s", msg)
                if args:
                    self._runs.pop(args[0], None)
            finally:
                self._queue.task_done()

    def _init(self, tid: str, name: str, config: dict[str, Any], resume: bool) -> None:
        import wandb

        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True,
                                  x_disable_machine_info=True, disable_git=True, save_code=False,
                                  x_save_requirements=False, disable_job_creation=True)
        kw: dict[str, Any] = {}
        if resume and self.mode == "online":
            kw["resume"] = "allow"
        self._runs[tid] = wandb.init(
            project=self.project, entity=self.entity, group=self.group, name=name, id=tid, config=config,
            mode=self.mode, dir=self.dir, tags=self.tags or None, reinit="create_new", settings=settings, **kw)

    def _log(self, tid: str, row: dict[str, Any], step: int) -> None:
        run = self._runs.get(tid)
        if run is not None:
            run.log(row, step=step)

    def _summary(self, tid: str, items: dict[str, Any]) -> None:
        run = self._runs.get(tid)
        if run is not None:
            for k, v in items.items():
                run.summary[k] = v

    def _finish(self, tid: str, exit_code: int) -> None:
        run = self._runs.pop(tid, None)
        if run is not None:
            run.finish(exit_code=exit_code)

    def _warm_up(self) -> None:
        import wandb

        wandb.setup()  # import + start the wandb-core service while Ray starts the first trial actors

    # ---- Tune hooks (driver thread) ------------------------------------------------------------------
    def setup(self, **info) -> None:
        self._submit(self._warm_up)

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        tid = trial.trial_id
        if tid in self._open or tid in self.finished:  # a retry or a PBT resume: keep the open run
            return
        self._open.add(tid)
        name = self.name_fn(trial) if self.name_fn else tid
        config = flat_config(self.config_fn(trial.config) if self.config_fn else trial.config, self._secrets)
        config["trial_id"] = tid
        self._submit(self._init, tid, name, config, tid in self._resumed or tid in self.last_step)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        tid = trial.trial_id
        if tid not in self._open:
            self.on_trial_start(iteration, trials, trial)
        raw = result.get("step", result.get("training_iteration"))
        if raw is None:
            return
        step = int(raw)
        if step <= self.last_step.get(tid, -1):  # a restored trial re-reporting: never log a step twice
            return
        row = {k: v for k in self.eval_keys if (v := _number(result.get(k))) is not None}
        if not row:
            return
        self.last_step[tid] = step
        self._submit(self._log, tid, row, step)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        tid = trial.trial_id
        self.retries[tid] = self.retries.get(tid, 0) + 1
        self._submit(self._summary, tid, {"retries": self.retries[tid]})

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        last = trial.last_result or {}
        items = {k: v for k in SUMMARY_KEYS if (v := _number(last.get(k))) is not None}
        items.setdefault("status", "stopped")
        self._end(trial, items, exit_code=1 if is_failure(items["status"]) else 0)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        last = trial.last_result or {}
        items = {k: v for k in SUMMARY_KEYS[:-1] if (v := _number(last.get(k))) is not None}
        items["status"] = "failed"
        reason = _last_error_line(trial.error_file)
        if reason:
            items["error"] = scrub(reason, self._secrets)
        self._end(trial, items, exit_code=1)

    def _end(self, trial, items: dict[str, Any], exit_code: int) -> None:
        tid = trial.trial_id
        if tid not in self._open:  # e.g. errored before it ever started: still make its run
            self.on_trial_start(0, [], trial)
        items["retries"] = self.retries.get(tid, 0)
        self._submit(self._summary, tid, items)
        self._submit(self._finish, tid, exit_code)
        self._open.discard(tid)
        self.finished.add(tid)

    def on_experiment_end(self, trials: list, **info) -> None:
        self.close()

    def close(self, timeout: float | None = 120.0) -> None:
        """Finish runs still open (exit code 1: the sweep ended under them) and wait for the queue."""
        for tid in sorted(self._open):
            self._submit(self._summary, tid, {"status": "interrupted", "retries": self.retries.get(tid, 0)})
            self._submit(self._finish, tid, 1)
        self._open.clear()
        if self._thread is not None and self._thread.is_alive():
            self._queue.put((None, ()))
            self._thread.join(timeout)
            self._thread = None

    # ---- experiment state (Tuner.restore) ------------------------------------------------------------
    def get_state(self) -> dict | None:
        return {"last_step": dict(self.last_step), "retries": dict(self.retries),
                "finished": sorted(self.finished), "open": sorted(self._open)}

    def set_state(self, state: dict) -> None:
        self.last_step = {k: int(v) for k, v in state.get("last_step", {}).items()}
        self.retries = {k: int(v) for k, v in state.get("retries", {}).items()}
        self.finished = set(state.get("finished", []))
        self._resumed = set(state.get("open", []))


def _last_error_line(path: str | None) -> str | None:
    """The last non-empty line of Tune's error.txt (usually ``SomeError: message``), at most 500 chars."""
    if not path:
        return None
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][:500] if lines else None

