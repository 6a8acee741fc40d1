"""Tasks: what a trial post-trains, behind one small protocol, so the loop, controller, reset and checkpoints
work unchanged for every task.

A task is a class constructed as ``Task(cfg: TrialConfig, base: Base, device: torch.device)`` that provides
the members of :class:`Task` below. ``task.name`` in the config is ``sparse_attention``, ``weight_sparsity`` or
an import path ``package.module:Name`` (own tasks read their settings from ``task.options``).

Sparse attention (the flagship). Every causal edge (i, j <= i) of every head h in every layer has a gate:

    logp_ij = log_softmax(q_i . k_j / sqrt(d))_j      zero-filled where j > i (else d/da = 0 * inf = NaN; the
                                                       model's mask is a finite -1e9, so 0 * logp is 0 there)
    z_ij    = a_h * logp_ij + b_h                      per-head scale a >= 0 (init gate_init_scale; projected
                                                       before every forward), bias b (init gate_init_bias)
    g_ij    = sigmoid((z_ij + L_ij) / tau)             training, relaxed Bernoulli, L ~ Logistic(0, 1)
            = [z_ij + L_ij > 0]                        training, straight-through (backward: the relaxed g)
            = [z_ij > 0]                               evaluation: the deterministic hard gate
    g_ii    = 1                                        the diagonal is always kept: no row is empty
    w_ij    = p_ij * g_ij                              gates multiply the attention probabilities;
                                                       ``task.options["renormalize"] = True`` divides by
                                                       sum_k p_ik g_ik (= softmax over the kept edges)

    S       = mean over switchable edges (j < i) of sigmoid(z_ij) = P(hard gate on), in [0, 1]
    density = kept switchable edges / switchable edges, over every layer, head and window of the validation set

The forward and backward of the gate are one autograd function (:class:`_GatedProbs`) that builds no more
(B, H, T, T) tensors than it needs.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from trainables.config import ConfigError, TrialConfig
from trainables.model import build_model, causal_mask, cross_entropy

if TYPE_CHECKING:
    from trainables.pretrain import Base


@runtime_checkable
class Task(Protocol):
    """What the loop needs from a task. ``step`` is set by the loop before every training step."""

    model: nn.Module
    step: int

    def param_groups(self) -> list[dict]:
        """AdamW groups. A group with ``"scheduled": True`` follows the LR warm-up + cosine (its ``lr`` is the
        peak); others keep their ``lr``."""

    def loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Training: ``(ce, reg)``, both scalars; the loop minimises ``ce + lambda * reg``. ``reg`` in [0, 1]."""

    def evaluate(self, val: tuple[Tensor, Tensor]) -> dict[str, float]:
        """Deterministic gates on the fixed validation set: ``{"val/ce": ..., "density": ...}``."""

    def reset_gates_(self) -> None:
        """Re-open / re-initialise the gates in place (the ``gates`` part of a reset)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, d: dict) -> None: ...


EVAL_CHUNK = 64  # validation windows per forward pass


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def gated_param_groups(cfg: TrialConfig, model: nn.Module, gates: nn.Module) -> list[dict]:
    """AdamW groups of a gated task: the model on the warm-up + cosine schedule at ``train.lr``, the gates at
    ``task.gate_lr`` without weight decay and without schedule."""
    return [
        {"params": list(model.parameters()), "lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay,
         "scheduled": True},
        {"params": list(gates.parameters()), "lr": cfg.task.gate_lr, "weight_decay": 0.0, "scheduled": False},
    ]


# ---- sparse attention ------------------------------------------------------------------------------------
def count_edges(keep: Tensor) -> tuple[int, int]:
    """``keep`` (..., T, T) bool -> (kept switchable edges, switchable edges); switchable = j < i."""
    T = keep.size(-1)
    strict = causal_mask(T, keep.device, strict=True)
    n_maps = keep.numel() // (T * T)
    return int((keep & strict).sum()), n_maps * T * (T - 1) // 2


def hard_gates(z: Tensor) -> Tensor:
    """Deterministic gates: ``z > 0`` on j < i, always on the diagonal, off where j > i. (..., T, T) bool."""
    T = z.size(-1)
    return ((z > 0) & causal_mask(T, z.device, strict=True)) | torch.eye(T, dtype=torch.bool, device=z.device)


def _masks(T: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(causal j <= i, switchable j < i, identity) as float (T, T) tensors, cached."""
    key = (T, str(device))
    if key not in _FMASKS:
        _FMASKS[key] = (causal_mask(T, device).float(), causal_mask(T, device, strict=True).float(),
                        torch.eye(T, device=device))
    return _FMASKS[key]


_FMASKS: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}
EXP_CLAMP = 80.0  # exp() of a larger |x| takes a slow path on CPU (10x); e^-80 is 0 for every purpose here


def _probs(scores: Tensor) -> tuple[Tensor, Tensor]:
    """(p, logp) of masked scores (B, H, T, T) with one exp pass; both exactly 0 where j > i."""
    causal = _masks(scores.size(-1), scores.device)[0]
    s = scores.float()
    m = s.amax(-1, keepdim=True)
    p = (s - m).clamp_(min=-EXP_CLAMP).exp_().mul_(causal)
    total = p.sum(-1, keepdim=True)
    p.div_(total)
    return p, (s - (m + total.log())).mul_(causal)


def gate_logits(scores: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(p, z) from masked scores (B, H, T, T): probabilities and gate logits ``a*logp + b``."""
    p, logp = _probs(scores)
    return p, torch.addcmul(b.view(1, -1, 1, 1), logp, a.view(1, -1, 1, 1))


class _GatedProbs(torch.autograd.Function):
    """``(w, reg_sum) = f(scores, a, b, u)`` with a hand-written backward (see the module docstring).

    With e = exp(-z) one exponential gives both r = sigmoid(z) = 1 / (1 + e) and the relaxed gate
    g_s = sigmoid((z + logit u) / tau) = 1 / (1 + (e (1 - u) / u) ** (1 / tau))   (a square at tau = 0.5).
    Backward, with t = dw * p and r, g_s zeroed off the switchable edges (so no gradient reaches the diagonal):
        dz    = t * g_s (1 - g_s) / tau + dreg * r (1 - r)
        da_h  = sum dz * logp,  db_h = sum dz
        dlogp = a * dz + t * g;   ds = dlogp - p * sum_j dlogp
    Outside the causal mask p = logp = 0 (zero-filled by a multiplication), so t = dz = ds = 0 there.
    Renormalised (w = q / Q, q = p g, Q = sum_j q): dw is first replaced by dq = (dw - sum_j dw w) / Q.
    """

    @staticmethod
    def forward(ctx, scores: Tensor, a: Tensor, b: Tensor, u: Tensor, tau: float, straight: bool,
                renorm: bool = False):
        _, strict, eye = _masks(scores.size(-1), scores.device)
        p, logp = _probs(scores)  # (B, H, T, T)
        z = torch.addcmul(b.view(1, -1, 1, 1), logp, a.view(1, -1, 1, 1))
        e = z.neg_().clamp_(-EXP_CLAMP, EXP_CLAMP).exp_()  # exp(-z), z consumed
        r = (e + 1.0).reciprocal_().mul_(strict)  # sigmoid(z) on j < i, else 0
        reg_sum = r.sum()
        v = e.mul_(u.clamp_(min=1e-6).reciprocal_().sub_(1.0))  # e * (1 - u) / u
        v = v.mul_(v) if tau == 0.5 else v.pow_(1.0 / tau)
        gs = v.add_(1.0).reciprocal_().mul_(strict)  # relaxed gate on j < i, else 0
        g = (gs > 0.5).float() if straight else gs.clone()
        g.add_(eye)  # the diagonal: always 1
        w = p * g
        total = w.sum(-1, keepdim=True) if renorm else None  # >= p_ii > 0
        if renorm:
            w.div_(total)
        ctx.save_for_backward(p, g, gs, r, logp, a, w, total)
        ctx.tau, ctx.renorm = tau, renorm
        return w, reg_sum

    @staticmethod
    def backward(ctx, dw: Tensor, dreg: Tensor):
        p, g, gs, r, logp, a, w, total = ctx.saved_tensors
        dw = dw.float()
        if ctx.renorm:  # w = q / sum_j q with q = p g:  dq = (dw - sum_j dw w) / sum_j q
            dw = (dw - (dw * w).sum(-1, keepdim=True)).div_(total)
        t = dw * p
        dz = torch.addcmul(gs, gs, gs, value=-1.0).mul_(t)  # g_s (1 - g_s) t
        if ctx.tau != 1.0:
            dz.mul_(1.0 / ctx.tau)
        dz.add_(torch.addcmul(r, r, r, value=-1.0), alpha=float(dreg))
        da = (dz * logp).sum((0, 2, 3))
        db = dz.sum((0, 2, 3))
        dlogp = dz.mul_(a.view(1, -1, 1, 1)).addcmul_(t, g)  # (B, H, T, T)
        ds = dlogp.addcmul_(p, dlogp.sum(-1, keepdim=True), value=-1.0)
        return ds, da, db, None, None, None, None


class AttentionGates(nn.Module):
    """Per-layer, per-head gate scale ``a`` and bias ``b``: (n_layer, n_head) each."""

    def __init__(self, n_layer: int, n_head: int, scale: float, bias: float):
        super().__init__()
        self.init = (scale, bias)
        self.a = nn.Parameter(torch.full((n_layer, n_head), float(scale)))
        self.b = nn.Parameter(torch.full((n_layer, n_head), float(bias)))

    @torch.no_grad()
    def reset_(self) -> None:
        self.a.fill_(self.init[0])
        self.b.fill_(self.init[1])

    @torch.no_grad()
    def project_(self) -> None:
        """Keep a >= 0 (projected gradient): the gate is monotone in p, it never prefers less-attended edges.
        Unprojected, one head's a went negative in the first 100 steps and its gates saturated open for good
        (z = a logp + b >> 0 for every edge, sigmoid'(z) = 0): density stuck at 1/8 (one head of 8)."""
        self.a.clamp_(min=0.0)


class SparseAttentionTask:
    """Gates on every causal attention edge of a pretrained GPT (module docstring)."""

    def __init__(self, cfg: TrialConfig, base: Base, device: torch.device | str = "cpu"):
        self.cfg, self.device, self.step = cfg, torch.device(device), 0
        self.model = build_model(cfg.model).to(self.device)
        self.model.load_state_dict(base.state)
        t = cfg.task
        self.gates = AttentionGates(cfg.model.n_layer, cfg.model.n_head, t.gate_init_scale, t.gate_init_bias)
        self.gates.to(self.device)
        self.tau, self.straight = t.temperature, t.gate_mode == "straight_through"
        self.renorm = bool(t.options.get("renormalize", False))

    def param_groups(self) -> list[dict]:
        return gated_param_groups(self.cfg, self.model, self.gates)

    def loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        self.gates.project_()
        reg_sums: list[Tensor] = []

        def hook(scores: Tensor, layer: int) -> Tensor:  # scores (B, H, T, T)
            u = torch.rand(scores.shape, device=scores.device)
            w, reg_sum = _GatedProbs.apply(scores, self.gates.a[layer], self.gates.b[layer], u, self.tau,
                                           self.straight, self.renorm)
            reg_sums.append(reg_sum)
            return w.to(scores.dtype)

        with _autocast(self.device):
            logits = self.model(x.to(self.device), hook)
        ce = cross_entropy(logits, y.to(self.device))
        T = x.size(1)
        n_switchable = x.size(0) * self.cfg.model.n_head * T * (T - 1) // 2 * len(reg_sums)
        return ce, torch.stack(reg_sums).sum() / max(n_switchable, 1)

    @torch.no_grad()
    def evaluate(self, val: tuple[Tensor, Tensor]) -> dict[str, float]:
        self.gates.project_()
        kept = total = 0
        ce_sum, n_tok = 0.0, 0

        def hook(scores: Tensor, layer: int) -> Tensor:
            nonlocal kept, total
            p, z = gate_logits(scores, self.gates.a[layer], self.gates.b[layer])
            keep = hard_gates(z)
            k, n = count_edges(keep)
            kept, total = kept + k, total + n
            w = p * keep
            if self.renorm:
                w.div_(w.sum(-1, keepdim=True))
            return w.to(scores.dtype)

        x_all, y_all = val
        for i in range(0, len(x_all), EVAL_CHUNK):
            x, y = x_all[i : i + EVAL_CHUNK].to(self.device), y_all[i : i + EVAL_CHUNK].to(self.device)
            with _autocast(self.device):
                logits = self.model(x, hook)
            ce_sum += float(cross_entropy(logits, y)) * y.numel()
            n_tok += y.numel()
        return {"val/ce": ce_sum / n_tok, "density": kept / max(total, 1)}

    def reset_gates_(self) -> None:
        self.gates.reset_()

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "gates": self.gates.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        self.gates.load_state_dict(d["gates"])


# ---- weight sparsity ---------------------------------------------------------------------------------------
class WeightSparsityTask:
    """Hard-concrete L0 gates (Louizos et al. 2018) on every weight matrix of the transformer blocks.

    ``W_eff = W * g`` with ``g`` from :class:`trainables.hard_concrete.HardConcreteGate`;
    S = expected fraction of non-zero gates (weighted by matrix size); density = deterministic gates > 0.
    ``task.options["init_keep"]`` (default 0.9) sets the initial keep probability.
    """

    def __init__(self, cfg: TrialConfig, base: Base, device: torch.device | str = "cpu"):
        from trainables.hard_concrete import HardConcreteGate

        self.cfg, self.device, self.step = cfg, torch.device(device), 0
        self.model = build_model(cfg.model).to(self.device)
        self.model.load_state_dict(base.state)
        keep = float(cfg.task.options.get("init_keep", 0.9))
        self.names = [n for n, p in self.model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
        params = dict(self.model.named_parameters())
        self.gates = nn.ModuleList(HardConcreteGate(tuple(params[n].shape), init_keep=keep) for n in self.names)
        self.gates.to(self.device)
        self.sizes = [params[n].numel() for n in self.names]
        self._init_state = copy.deepcopy(self.gates.state_dict())

    def param_groups(self) -> list[dict]:
        return gated_param_groups(self.cfg, self.model, self.gates)

    def _forward(self, x: Tensor) -> Tensor:
        params = dict(self.model.named_parameters())
        masked = {n: params[n] * g() for n, g in zip(self.names, self.gates, strict=True)}
        with _autocast(self.device):
            return torch.func.functional_call(self.model, masked, (x,), strict=False)

    def loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        self.gates.train()
        ce = cross_entropy(self._forward(x.to(self.device)), y.to(self.device))
        reg = sum(g.expected_l0() * n for g, n in zip(self.gates, self.sizes, strict=True)) / sum(self.sizes)
        return ce, reg

    @torch.no_grad()
    def evaluate(self, val: tuple[Tensor, Tensor]) -> dict[str, float]:
        self.gates.eval()
        try:
            ce_sum, n_tok = 0.0, 0
            for i in range(0, len(val[0]), EVAL_CHUNK):
                x, y = val[0][i : i + EVAL_CHUNK].to(self.device), val[1][i : i + EVAL_CHUNK].to(self.device)
                ce_sum += float(cross_entropy(self._forward(x), y)) * y.numel()
                n_tok += y.numel()
            kept = sum(int((g.deterministic() > 0).sum()) for g in self.gates)
        finally:
            self.gates.train()
        return {"val/ce": ce_sum / n_tok, "density": kept / sum(self.sizes)}

    def reset_gates_(self) -> None:
        self.gates.load_state_dict(self._init_state)  # in place: the optimizer keeps its references

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "gates": self.gates.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        self.gates.load_state_dict(d["gates"])


BUILTIN: dict[str, type] = {"sparse_attention": SparseAttentionTask, "weight_sparsity": WeightSparsityTask}


def task_class(name: str) -> type:
    """A built-in task by name, or an own task by import path ``package.module:Name``; else ``ConfigError``."""
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        return _bad(name, f"unknown task; use one of {sorted(BUILTIN)} or an import path 'package.module:Name'")
    module, _, attr = name.partition(":")
    try:
        obj: Any = _import(module)
    except Exception as e:  # noqa: BLE001 - any import failure is a config problem here
        return _bad(name, f"cannot import module '{module}': {type(e).__name__}: {e}")
    for part in attr.split("."):
        if not hasattr(obj, part):
            return _bad(name, f"module '{module}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        return _bad(name, f"'{name}' is not a class")
    return obj


def _import(module: str):
    """Import ``module``; like ``python -m``, the current directory counts as a place to find it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if cwd in sys.path or not (e.name and module.startswith(e.name)):
            raise
        sys.path.append(cwd)
        return importlib.import_module(module)


def _bad(name: str, msg: str):
    raise ConfigError([("task.name", f"{name!r}: {msg}")])


def make_task(cfg: TrialConfig, base: Base, device: torch.device | str = "cpu") -> Task:
    return task_class(cfg.task.name)(cfg, base, torch.device(device))
