"""The base model: pretrained once per (data, model, pretrain) config and cached on disk.

    base = get_base(cfg)          # trains on the first call, loads the stored checkpoint on every later one

The cache key is a SHA-256 of the ``data``, ``model`` and ``pretrain`` sections (``pretrain.cache_dir`` left
out), a digest of the corpus text and a format version. The file ``<cache_dir>/base-<key>.pt`` holds the weights, the base model's val CE on
the fixed validation set (targets may be relative to it) and the config. It is written to a temporary file and
renamed into place, under an exclusive file lock, so racing processes train it once and never read half a file.

Training: AdamW (betas 0.9, 0.95) at ``pretrain.lr`` with linear warm-up over ``pretrain.warmup`` steps and a
cosine decay to 10 % of the peak, gradient clipping 1.0, batches of ``pretrain.batch`` random windows.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from trainables import checkpoint
from trainables.config import TrialConfig
from trainables.data import BatchSampler, load_corpus, val_windows
from trainables.model import GPT, build_model, cross_entropy

FORMAT = 1
Progress = Callable[[int, int, float], None]  # (step, total steps, training loss)


@dataclass
class Base:
    state: dict[str, Tensor]
    val_ce: float
    key: str
    path: str
    config: dict = field(default_factory=dict)


def cache_dir(cfg: TrialConfig) -> Path:
    d = cfg.pretrain.cache_dir or os.environ.get("TIGHTROPE_CACHE") or "~/.cache/tightrope"
    return Path(d).expanduser()


def base_config(cfg: TrialConfig) -> dict:
    """The part of the config a base model depends on."""
    return {"format": FORMAT, "data": cfg.data.model_dump(), "corpus": load_corpus(cfg.data).digest,
            "model": cfg.model.model_dump(),
            "pretrain": cfg.pretrain.model_dump(exclude={"cache_dir"})}


def base_key(cfg: TrialConfig) -> str:
    text = json.dumps(base_config(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(step: int, warmup: int, total: int, start: int = 0, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps counted from ``start``, cosine from 1 to ``floor`` over ``total``."""
    warm = min(1.0, (step - start + 1) / warmup) if warmup > 0 else 1.0
    cos = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return warm * cos


@torch.no_grad()
def evaluate_ce(model: GPT, val: tuple[Tensor, Tensor], device: torch.device, chunk: int = 64) -> float:
    """Mean CE of the dense model on the fixed validation set (nats/token)."""
    ce_sum, n = 0.0, 0
    for i in range(0, len(val[0]), chunk):
        x, y = val[0][i : i + chunk].to(device), val[1][i : i + chunk].to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x)
        ce_sum += float(cross_entropy(logits, y)) * y.numel()
        n += y.numel()
    return ce_sum / n


def train_base(cfg: TrialConfig, progress: Progress | None = None) -> tuple[dict[str, Tensor], float]:
    """Pretrain from scratch; return (CPU state dict, val CE)."""
    p, device = cfg.pretrain, resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    corpus = load_corpus(cfg.data)
    val = val_windows(corpus, cfg.data.val_tokens, cfg.model.context)
    torch.manual_seed(p.seed)
    model = build_model(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=(0.9, 0.95), weight_decay=p.weight_decay)
    sampler = BatchSampler(corpus.train, p.batch, cfg.model.context, p.seed)
    for step in range(p.steps):
        for g in opt.param_groups:
            g["lr"] = p.lr * lr_factor(step, p.warmup, p.steps)
        x, y = sampler.next()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x.to(device))
        loss = cross_entropy(logits, y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if progress is not None and (step % 10 == 0 or step == p.steps - 1):
            progress(step + 1, p.steps, float(loss.detach()))
    val_ce = evaluate_ce(model, val, device)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, val_ce


def get_base(cfg: TrialConfig, progress: Progress | None = None) -> Base:
    """The cached base model of ``cfg``; pretrains (once, even across racing processes) when missing."""
    key = base_key(cfg)
    d = cache_dir(cfg)
    path = d / f"base-{key}.pt"
    if path.exists():
        return _load(path)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"base-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a racing process waits here, then finds the file
        try:
            if path.exists():
                return _load(path)
            t0 = time.perf_counter()
            state, val_ce = train_base(cfg, progress)
            checkpoint.save({"state": state, "val_ce": val_ce, "key": key, "config": base_config(cfg),
                             "train_s": time.perf_counter() - t0}, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return _load(path)


def _load(path: Path) -> Base:
    d = checkpoint.load(path)
    return Base(state=d["state"], val_ce=float(d["val_ce"]), key=d["key"], path=str(path), config=d["config"])
