"""One trial: post-train a task while a controller sets the regulariser strength lambda. No Ray here.

    summary = run(cfg)                                   # pretrains (or loads) the base model first
    summary = run(cfg, base=base, on_eval=report)        # report(metrics, state_fn) after every evaluation
    summary = run(cfg, base=base, resume=state)          # continue exactly from a state_fn() result

Each training step minimises ``ce + lambda * reg`` with AdamW: the model's parameters at ``train.lr`` (linear
warm-up over ``train.warmup`` steps, cosine to 10 % of it at ``train.steps``, gradient norm clipped to
``train.grad_clip``; the gates are not clipped: Adam is scale-free and a large lambda must not starve the
model's gradients), the gate parameters at ``task.gate_lr`` without weight decay.

Every ``eval.every`` steps, at step 0, at the reset step and at the last step the task is evaluated on the fixed
validation set with deterministic gates, and the controller is updated with the val CE, except while the model
LR warms up (at step 0 and at the reset step too: lambda is then exactly lambda_init after a lambda reset).
A non-finite val CE is not fed to the controller; that row is still reported, then ``TrialDiverged`` is raised.

Reset at step ``reset.at`` (after that step's update, before its evaluation), parts: ``lambda``, ``controller``
(the controller's ``reset_``), ``optimizer`` (fresh AdamW: moments and step count), ``lr_warmup`` (the warm-up
restarts at this step; the controller is frozen again during it), ``gates`` (the task's ``reset_gates_``).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable

import torch

from trainables.config import TrialConfig
from trainables.controller import make_controller
from trainables.data import BatchSampler, load_corpus, val_windows
from trainables.metrics import summarize
from trainables.pretrain import Base, get_base, lr_factor, resolve_device
from trainables.tasks import make_task

STATE_VERSION = 1
OnEval = Callable[[dict, Callable[[], dict]], None]


class TrialDiverged(RuntimeError):
    """The validation CE became non-finite; the trial cannot continue."""


class Trial:
    """All the state of one trial, with ``state_dict()`` / ``load_state_dict()`` for exact resumption."""

    def __init__(self, cfg: TrialConfig, base: Base):
        self.cfg, self.base = cfg, base
        self.device = resolve_device(cfg.train.device)
        corpus = load_corpus(cfg.data)
        self.val = tuple(t.to(self.device) for t in val_windows(corpus, cfg.data.val_tokens, cfg.model.context))
        self.target = cfg.target.resolve(base.val_ce)
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        self.task = make_task(cfg, base, self.device)
        self.opt = self._optimizer()
        self.ctrl = make_controller(cfg.controller, self.target)
        self.sampler = BatchSampler(corpus.train, cfg.train.batch, cfg.model.context, cfg.train.seed + 1)
        self.step = 0
        self.warm_start = 0  # step the current LR warm-up started at (0, or the reset step)
        self.rows: list[dict] = []
        self.train_s = 0.0
        self.lr = cfg.train.lr * lr_factor(0, cfg.train.warmup, cfg.train.steps)
        self.clip_params = [p for g in self.opt.param_groups if g.get("scheduled") for p in g["params"]]

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.task.param_groups(), betas=(0.9, 0.95))

    # ---- schedule ----------------------------------------------------------------------------------------
    def frozen(self) -> bool:
        """The controller holds still while the model LR warms up."""
        return self.step < self.warm_start + self.cfg.train.warmup

    def _set_lr(self) -> None:
        t = self.cfg.train
        f = lr_factor(self.step, t.warmup, t.steps, start=self.warm_start)
        for g in self.opt.param_groups:
            if g.get("scheduled"):
                g["lr"] = g.setdefault("peak_lr", g["lr"]) * f
        self.lr = t.lr * f

    # ---- the three things a trial does ---------------------------------------------------------------------
    def train_step(self) -> float:
        self._set_lr()
        self.task.step = self.step
        x, y = self.sampler.next()
        ce, reg = self.task.loss(x, y)
        loss = ce + self.ctrl.lam * reg
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.clip_params, self.cfg.train.grad_clip)
        self.opt.step()
        ce_v = float(ce.detach())
        self.ctrl.observe_(ce_v)
        self.step += 1
        return ce_v

    def reset_(self, parts: set[str]) -> None:
        self.ctrl.reset_(parts)
        if "optimizer" in parts:
            self.opt = self._optimizer()
            self.clip_params = [p for g in self.opt.param_groups if g.get("scheduled") for p in g["params"]]
        if "lr_warmup" in parts:
            self.warm_start = self.step
        if "gates" in parts:
            self.task.reset_gates_()

    def evaluate(self, train_ce: float, tokens_per_s: float, *, fresh_start: bool = False) -> dict:
        self.task.step = self.step
        m = self.task.evaluate(self.val)
        val_ce, density = float(m["val/ce"]), float(m["density"])
        lam = self.ctrl.lam
        if math.isfinite(val_ce):
            lam = self.ctrl.update_(val_ce, frozen=fresh_start or self.frozen())
        row = {"step": self.step, "val/ce": val_ce, "train/ce": train_ce, "target": self.target,
               "violation": val_ce - self.target, "lambda": float(lam), "density": density, "lr": self.lr,
               "tokens_per_s": tokens_per_s}
        self.rows.append(row)
        return row

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state = {"version": STATE_VERSION, "step": self.step, "warm_start": self.warm_start,
                 "task": self.task.state_dict(), "optimizer": self.opt.state_dict(),
                 "controller": self.ctrl.state_dict(), "sampler": self.sampler.state_dict(), "rng": rng,
                 "rows": self.rows, "time/train_s": self.train_s, "target": self.target,
                 "base_key": self.base.key, "config": self.cfg.model_dump()}
        return copy.deepcopy(state)  # a snapshot: training goes on mutating the live tensors

    def load_state_dict(self, d: dict) -> None:
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"checkpoint version {d.get('version')} != {STATE_VERSION}")
        self.step, self.warm_start = int(d["step"]), int(d["warm_start"])
        self.task.load_state_dict(d["task"])
        self.opt.load_state_dict(d["optimizer"])
        self.ctrl.load_state_dict(d["controller"])
        self.sampler.load_state_dict(d["sampler"])
        torch.set_rng_state(d["rng"]["torch"])
        random.setstate(d["rng"]["python"])
        if "cuda" in d["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(d["rng"]["cuda"])
        self.rows = [dict(r) for r in d["rows"]]
        self.train_s = float(d["time/train_s"])
        self.lr = float(self.rows[-1]["lr"]) if self.rows else self.lr


def run(cfg: TrialConfig, *, base: Base | None = None, resume: dict | None = None,
        on_eval: OnEval | None = None) -> dict:
    """Run (or continue) one trial; return ``metrics.summarize`` of its evaluation rows."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    load_corpus(cfg.data)  # a bad data.path fails here, before any pretraining
    if base is None:
        base = get_base(cfg)
    trial = Trial(cfg, base)
    if resume is not None:
        trial.load_state_dict(resume)
    every, steps, reset_at = cfg.eval.every, cfg.train.steps, cfg.reset.at
    nan = float("nan")

    def emit(row: dict) -> None:
        out = dict(row)
        out["time/train_s"] = trial.train_s
        if on_eval is not None:
            on_eval(out, trial.state_dict)
        if not math.isfinite(row["val/ce"]):
            raise TrialDiverged(f"val/ce is {row['val/ce']} at step {row['step']}")

    t0 = time.perf_counter()
    if not trial.rows:
        row = trial.evaluate(nan, nan, fresh_start=True)
        trial.train_s += time.perf_counter() - t0
        emit(row)
    ce_sum, n_ce, tokens, t_train = 0.0, 0, 0, 0.0
    while trial.step < steps:
        t0 = time.perf_counter()
        ce_sum += trial.train_step()
        n_ce += 1
        tokens += cfg.train.batch * cfg.model.context
        if trial.device.type == "cuda":
            torch.cuda.synchronize()
        t_train += time.perf_counter() - t0
        is_reset = trial.step == reset_at
        if is_reset:
            trial.reset_(set(cfg.reset.parts))
        if trial.step % every == 0 or trial.step == steps or is_reset:
            t1 = time.perf_counter()
            row = trial.evaluate(ce_sum / n_ce, tokens / max(t_train, 1e-9), fresh_start=is_reset)
            trial.train_s += t_train + time.perf_counter() - t1
            ce_sum, n_ce, tokens, t_train = 0.0, 0, 0, 0.0
            emit(row)
    return summarize(trial.rows)
