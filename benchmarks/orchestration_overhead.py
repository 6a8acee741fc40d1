"""Orchestration overhead of a sweep, with W&B logging on (offline) and off, measured side by side in one run.

For each trial: overhead = slot time (driver saw it start .. end, actor start-up included) - time spent inside the
training loop (``time/train_s``). Printed: the median overhead per trial and the share of slot-time spent training.
Goals (issue 3): median overhead <= 2 s per trial with W&B on; >= 90 % of slot-time training for ~1 min trials.

    python benchmarks/orchestration_overhead.py                   # smoke-sized trials
    python benchmarks/orchestration_overhead.py --train-steps 5000 --eval-every 20   # trials of about a minute
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(spec) -> dict:
    from orchestrator.sweep import run_sweep

    out = run_sweep(spec, quiet=True)
    rows = [t for t in out["trials"] if t["status"] == "completed"]
    overhead = [t["wall_s"] - t["train_s"] for t in rows]
    return {"trials": len(rows), "median_overhead_s": statistics.median(overhead),
            "train_share": sum(t["train_s"] for t in rows) / sum(t["wall_s"] for t in rows),
            "median_train_s": statistics.median(t["train_s"] for t in rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-steps", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=5, help="evaluations between checkpoints (quickstart: 5)")
    args = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("WANDB_SILENT", "true")
    import ray

    from tests.sweep_helpers import smoke_spec

    trial = {}
    if args.train_steps:
        trial["train.steps"] = args.train_steps
    if args.eval_every:
        trial["eval.every"] = args.eval_every
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for label, mode in (("W&B off", "disabled"), ("W&B offline", "offline")):
            spec = smoke_spec(Path(tmp) / label.replace(" ", "-"), name=f"bench-{mode}", trial=trial,
                              wandb={"mode": mode}, checkpoint={"every": args.checkpoint_every, "keep": 2})
            results[label] = measure(spec)
    ray.shutdown()
    print(f"{'':12} {'trials':>6} {'median train s':>15} {'median overhead s':>18} {'train share':>12}")
    for label, r in results.items():
        print(f"{label:12} {r['trials']:>6} {r['median_train_s']:>15.2f} {r['median_overhead_s']:>18.2f} "
              f"{r['train_share']:>12.1%}")
    off, on = results["W&B off"], results["W&B offline"]
    print(f"W&B adds {on['median_overhead_s'] - off['median_overhead_s']:+.2f} s median overhead per trial "
          f"(ratio {on['median_overhead_s'] / max(off['median_overhead_s'], 1e-9):.2f}x)")


if __name__ == "__main__":
    main()
