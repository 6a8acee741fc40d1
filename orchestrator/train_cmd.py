"""``tightrope train [--out DIR] [--quiet] [key=value ...]``: one trial without Ray.

Writes ``DIR/evals.parquet`` (one row per evaluation, the metric vocabulary as columns), ``DIR/trial.json``
(resolved config, base model, final metrics, status) and ``DIR/curves.png`` (three panels). The Parquet file and
``trial.json`` are written on success, on failure and on Ctrl-C alike. Bad overrides are refused (exit 2) before
any data is read or any model trained.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.results import write_table
from trainables.config import resolve
from trainables.data import describe, load_corpus, val_windows
from trainables.loop import TrialDiverged
from trainables.loop import run as run_trial
from trainables.metrics import VOCAB, summarize
from trainables.pretrain import base_key, cache_dir, get_base
from trainables.tasks import task_class

COLUMNS = [*VOCAB, "time/train_s"]


def write_evals(rows: list[dict], path: Path) -> None:
    write_table(rows, path, columns=COLUMNS)


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def run(args) -> int:
    cfg = resolve(list(args.overrides))  # ConfigError -> exit 2, nothing touched yet
    task_class(cfg.task.name)  # an own task that cannot be imported is a config error too
    corpus = load_corpus(cfg.data)  # a bad data.path: ConfigError, still before any training
    val_windows(corpus, cfg.data.val_tokens, cfg.model.context)

    out = Path(args.out or f"runs/train-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True, quiet=args.quiet)
    console.print(f"[bold]tightrope train[/] -> {out}")
    console.print(f"data: {describe(corpus)}")

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn()]
    rows: list[dict] = []
    status, summary, base = "running", {}, None
    t0 = time.perf_counter()
    with Progress(*columns, console=console, disable=args.quiet, transient=False) as bar:
        key = base_key(cfg)
        pre = bar.add_task("pretrain", total=cfg.pretrain.steps, info=f"cache {cache_dir(cfg)} key {key}")

        def on_pretrain(step: int, total: int, loss: float) -> None:
            bar.update(pre, completed=step, info=f"loss {loss:.3f}")

        base = get_base(cfg, progress=on_pretrain)
        bar.update(pre, completed=cfg.pretrain.steps, info=f"val/ce {base.val_ce:.4f}  ({Path(base.path).name})")
        target = cfg.target.resolve(base.val_ce)
        trial = bar.add_task("train", total=cfg.train.steps, info=f"target {target:.4f}")

        def on_eval(m: dict, state_fn) -> None:
            rows.append(m)
            bar.update(trial, completed=m["step"],
                       info=f"lambda {m['lambda']:.3g}  density {m['density']:.4f}  "
                            f"val/ce {m['val/ce']:.4f} vs {m['target']:.4f} ({m['violation']:+.4f})")

        try:
            summary = run_trial(cfg, base=base, on_eval=on_eval)
            status = "ok"
        except TrialDiverged as e:
            status = "diverged"
            console.print(f"[red]trial diverged:[/] {e}")
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except Exception:
            status = "failed"
            raise
        finally:
            write_evals(rows, out / "evals.parquet")
            if not summary:
                summary = summarize(rows)
            info = {"status": status, "config": cfg.model_dump(), "flat": cfg.flat(),
                    "base": {"val_ce": base.val_ce, "key": base.key, "path": base.path},
                    "target": cfg.target.resolve(base.val_ce), "evals": len(rows),
                    "wall_s": time.perf_counter() - t0, **summary}
            (out / "trial.json").write_text(json.dumps(_json_safe(info), indent=2) + "\n")
            _figure(rows, out, cfg, base, console)

    console.print(f"final density {summary['final/density']:.4f}  val/ce {summary['final/val_ce']:.4f}  "
                  f"tracking error {summary['tracking_error']:.4f}  feasible {summary['feasible']}  "
                  f"-> {out}")
    return 0 if status == "ok" else 1


def _figure(rows, out: Path, cfg, base, console: Console) -> None:
    if not rows:
        return
    try:
        from orchestrator.figures import trial_figure

        trial_figure(rows, out / "curves.png", target=cfg.target.resolve(base.val_ce), reset_at=cfg.reset.at,
                     title=f"{cfg.task.name}, {cfg.controller.kind} k_i={cfg.controller.k_i:g}")
    except Exception as e:  # noqa: BLE001 - a figure must never lose the run's data
        console.print(f"[yellow]figure not written:[/] {type(e).__name__}: {e}")
