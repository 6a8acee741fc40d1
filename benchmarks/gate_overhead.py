"""Step-time ratio of the gated sparse-attention model to the same dense model, measured in one run.

    python benchmarks/gate_overhead.py [key=value ...]     # e.g. train.batch=64 model.context=128

Both do a full training step (forward, backward, gradient clipping, AdamW) on the same model size, batch and
threads; the dense one uses the fused ``scaled_dot_product_attention`` kernel. Repeats alternate between the two
and the best of each is compared. Goal: gated / dense <= 1.3.
"""

from __future__ import annotations

import sys
import time

import torch

from trainables.config import resolve
from trainables.model import build_model, cross_entropy
from trainables.pretrain import Base, resolve_device
from trainables.tasks import SparseAttentionTask


def main(argv: list[str]) -> None:
    cfg = resolve(argv)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(0)
    state = build_model(cfg.model).state_dict()
    base = Base(state=state, val_ce=0.0, key="bench", path="")
    dense = build_model(cfg.model).to(device)
    dense.load_state_dict(state)
    task = SparseAttentionTask(cfg, base, device)
    opt_d = torch.optim.AdamW(dense.parameters(), lr=cfg.train.lr)
    opt_g = torch.optim.AdamW(task.param_groups())
    B, T = cfg.train.batch, cfg.model.context
    x = torch.randint(0, 256, (B, T), device=device)
    y = torch.randint(0, 256, (B, T), device=device)

    def step_dense() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = cross_entropy(dense(x), y)
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dense.parameters(), 1.0)
        opt_d.step()

    def step_gated() -> None:
        ce, reg = task.loss(x, y)
        loss = ce + 0.1 * reg
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.model.parameters(), 1.0)
        opt_g.step()

    def timed(fn, n: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / n

    for fn in (step_dense, step_gated):
        timed(fn, 5)  # warm-up
    best = {"dense": float("inf"), "gated": float("inf")}
    for _ in range(7):
        best["dense"] = min(best["dense"], timed(step_dense, 20))
        best["gated"] = min(best["gated"], timed(step_gated, 20))
    print(f"device {device}, threads {torch.get_num_threads()}, batch {B}, context {T}, "
          f"layers {cfg.model.n_layer}, d_model {cfg.model.d_model}, heads {cfg.model.n_head}")
    print(f"dense step {best['dense'] * 1e3:.2f} ms, gated step {best['gated'] * 1e3:.2f} ms")
    print(f"ratio gated/dense = {best['gated'] / best['dense']:.2f}  (goal <= 1.3)")


if __name__ == "__main__":
    main(sys.argv[1:])
