"""``tightrope report DIR``: rebuild a sweep's figures, ``summary.md`` and ranked table from its Parquet files.

Reads ``DIR/evals.parquet`` and ``DIR/trials.parquet`` (pyarrow only; this module never imports Ray) and
writes ``DIR/figures/trial-<id>.png`` per trial, ``DIR/figures/overlay.png``, ``DIR/figures/frontier.png`` and
``DIR/summary.md``. The sweep calls ``build`` at its end; the command calls it on a finished folder.

The "varied" config keys shown per trial are the ``config/`` columns whose values differ across the trials.
The sweep name comes from ``build(name=...)``, else a ``sweep`` column, else ``name`` in ``DIR/sweep.json``
or ``DIR/spec.yaml``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from orchestrator import figures, results
from orchestrator.results import CONFIG_PREFIX, EVALS, TRIALS

FIGURES = "figures"
SUMMARY = "summary.md"
SPEC_FILES = ("spec.yaml", "sweep.yaml")


# --- helpers ----------------------------------------------------------------------------------------------------


def _canon(v: Any) -> str:
    """A comparable text form of a config value (NaN == NaN, [a, b] == (a, b))."""
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, tuple):
        v = list(v)
    return json.dumps(v, sort_keys=True, default=str)


def varied_keys(trials: list[dict]) -> list[str]:
    """``config/`` columns whose values differ across ``trials``, in column order."""
    keys: dict[str, None] = {}
    for r in trials:
        keys.update(dict.fromkeys(k for k in r if k.startswith(CONFIG_PREFIX)))
    return [k for k in keys if len({_canon(r.get(k)) for r in trials}) > 1]


def short_names(keys: list[str]) -> dict[str, str]:
    """``config/controller.k_i`` -> ``controller.k_i``: the dotted key as a spec writes it."""
    return {k: k.removeprefix(CONFIG_PREFIX) for k in keys}


def fmt(v: Any, spec: str = ".4g") -> str:
    """A table cell: floats formatted, None/NaN as '-', lists joined with '+'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return format(v, spec)
    if isinstance(v, (list, tuple)):
        return "+".join(str(x) for x in v) or "[]"
    return str(v)


def _value(v: Any) -> str:
    """A config value in a label: ``reset.at=none`` rather than ``reset.at=-``."""
    return "none" if v is None else fmt(v, ".3g")


def short_ids(ids: list[str]) -> dict[str, str]:
    """Drop a prefix shared by every id up to its last '_' (Ray's ``<exp>_00003`` -> ``00003``)."""
    heads = {i.rsplit("_", 1)[0] for i in ids if "_" in i}
    if len(ids) > 1 and len(heads) == 1 and all("_" in i for i in ids):
        return {i: i.rsplit("_", 1)[1] for i in ids}
    return {i: i for i in ids}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _sweep_name(d: Path, trials: list[dict], name: str | None) -> str | None:
    if name:
        return name
    for r in trials:
        if r.get("sweep"):
            return str(r["sweep"])
    if (d / "sweep.json").is_file():  # written by `tightrope sweep`
        try:
            meta = json.loads((d / "sweep.json").read_text())
        except (OSError, ValueError):
            meta = None
        if isinstance(meta, dict) and meta.get("name"):
            return str(meta["name"])
    for fname in SPEC_FILES:
        if (d / fname).is_file():
            import yaml

            try:
                spec = yaml.safe_load((d / fname).read_text())
            except yaml.YAMLError:
                continue
            if isinstance(spec, dict) and spec.get("name"):
                return str(spec["name"])
    return None


def _int_or_none(v: Any) -> int | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return int(x) if math.isfinite(x) else None


# --- the report -------------------------------------------------------------------------------------------------

COLUMNS = ("final/density", "final/val_ce", "target", "tracking_error", "feasible", "status")
_FMT = {"final/density": ".4g", "final/val_ce": ".4f", "target": ".4f", "tracking_error": ".4f"}


def _table_rows(ranked: list[dict], varied: list[str], ids: dict[str, str]) -> list[list[str]]:
    return [[str(i), ids[r["trial_id"]], *(fmt(r.get(k)) for k in varied),
             *(fmt(r.get(c), _FMT.get(c, ".4g")) for c in COLUMNS)] for i, r in enumerate(ranked, 1)]


def _summary_md(title: str, ranked: list[dict], varied: list[str], short: dict[str, str],
                ids: dict[str, str], fig_names: dict[str, str]) -> str:
    n = len(ranked)
    completed = sum(r.get("status") == "completed" for r in ranked)
    feasible = sum(r.get("status") != "failed" and results.is_feasible(r) for r in ranked)
    failed = sum(r.get("status") == "failed" for r in ranked)
    stopped = sum(r.get("status") == "stopped" for r in ranked)
    lines = [f"# {title}", "",
             f"trials: {n} · completed: {completed} · feasible: {feasible} · failed: {failed}"
             + (f" · stopped early: {stopped}" if stopped else ""), ""]
    top = results.best(ranked)
    if top is None:
        lines += ["**Best trial:** none (every trial failed)", ""]
    else:
        setting = ", ".join(f"{short[k]}={fmt(top.get(k))}" for k in varied)
        state = "feasible" if results.is_feasible(top) else "not feasible"
        lines += [f"**Best trial:** `{top['trial_id']}`" + (f" ({setting})" if setting else "")
                  + f": density {fmt(top.get('final/density'))} at val CE {fmt(top.get('final/val_ce'), '.4f')}"
                  + f" (target {fmt(top.get('target'), '.4f')}, {state}).", ""]
    header = ["rank", "trial", *(short[k] for k in varied), *COLUMNS]
    lines += ["## Ranked trials", "",
              "Feasible trials by final density (lower is better), then infeasible ones by final violation, "
              "then failed ones.", "",
              "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in _table_rows(ranked, varied, ids)]
    errors = [r for r in ranked if r.get("status") == "failed" or r.get("error")]
    if errors:
        lines += ["", "## Failed or stopped trials", ""]
        lines += [f"- `{r['trial_id']}` ({r.get('status')}): {r.get('error') or 'no reason recorded'}" for r in errors]
    lines += ["", "## Figures", "",
              f"- [overlay of all trials]({FIGURES}/overlay.png)",
              f"- [density vs val CE frontier]({FIGURES}/frontier.png)"]
    lines += [f"- trial `{r['trial_id']}`: [{fig_names[r['trial_id']]}]({FIGURES}/{fig_names[r['trial_id']]})"
              for r in ranked]
    lines += ["", f"![overlay]({FIGURES}/overlay.png)", "", f"![frontier]({FIGURES}/frontier.png)", ""]
    return "\n".join(lines)


def _rich_table(title: str, ranked: list[dict], varied: list[str], short: dict[str, str], ids: dict[str, str]):
    """The ranked table for a terminal: compact (leaf names of the varied keys, the target in the title when
    every trial has the same one) so that a few varied keys still fit 80 columns."""
    from rich import box
    from rich.table import Table

    cells = _table_rows(ranked, varied, ids)
    leaves = [short[k].rsplit(".", 1)[-1] for k in varied]
    heads = [short[k] if leaves.count(leaf) > 1 else leaf for k, leaf in zip(varied, leaves, strict=True)]
    targets = {fmt(r.get("target"), ".4f") for r in ranked if r.get("target") is not None}
    drop = {"target"} if len(targets) == 1 else set()
    if drop:
        title = f"{title} (target {targets.pop()})"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                  collapse_padding=True)
    table.add_column("#", no_wrap=True)
    table.add_column("trial", no_wrap=True)
    for j, h in enumerate(heads, 2):  # config values may fold on a narrow terminal; the numbers never do
        table.add_column(h, overflow="fold", min_width=min(max(len(h), *(len(c[j]) for c in cells)), 10))
    names = {"final/density": "density", "final/val_ce": "val CE", "tracking_error": "track err"}
    keep = [i for i, c in enumerate(COLUMNS) if c not in drop]
    for i in keep:
        c = COLUMNS[i]
        table.add_column(names.get(c, c), no_wrap=True, justify="left" if c in ("feasible", "status") else "right")
    n_fixed = 2 + len(varied)
    for r, row in zip(ranked, cells, strict=True):
        style = "red" if r.get("status") == "failed" else "green" if results.is_feasible(r) else None
        table.add_row(*row[:n_fixed], *(row[n_fixed + i] for i in keep), style=style)
    return table


def build(dir, *, console=None, name: str | None = None) -> list[dict]:
    """Rebuild figures, ``summary.md`` and the printed ranked table of the sweep in ``dir``; ranked rows back.

    ``console``: a ``rich.console.Console`` for the table (default: stdout; ``False``: print nothing).
    """
    d = Path(dir)
    trials = results.read_table(d / TRIALS)
    evals = results.read_table(d / EVALS)

    by_trial: dict[str, list[dict]] = defaultdict(list)
    for e in evals:
        by_trial[str(e.get("trial_id"))].append(e)
    for rows in by_trial.values():
        rows.sort(key=lambda e: (e.get("step") is None, e.get("step") or 0))
    for t in trials:  # the resolved target, from the evaluations when the trial row lacks it
        t["trial_id"] = str(t.get("trial_id"))
        if t.get("target") is None or (isinstance(t["target"], float) and math.isnan(t["target"])):
            t["target"] = figures._target_of(by_trial.get(t["trial_id"], []))

    ranked = results.rank(trials)
    varied = varied_keys(trials)
    short = short_names(varied)
    ids = short_ids([t["trial_id"] for t in ranked])
    labels = {t["trial_id"]: " ".join([ids[t["trial_id"]], *(f"{short[k]}={_value(t.get(k))}" for k in varied)])
              for t in ranked}
    sweep = _sweep_name(d, trials, name)
    title = f"Sweep {sweep}" if sweep else f"Sweep results: {d.name}"

    fig_dir = d / FIGURES
    fig_dir.mkdir(parents=True, exist_ok=True)
    fig_names = {t["trial_id"]: f"trial-{_safe(t['trial_id'])}.png" for t in ranked}
    reset_at = {t["trial_id"]: _int_or_none(t.get(f"{CONFIG_PREFIX}reset.at")) for t in ranked}
    for t in ranked:
        tid = t["trial_id"]
        status = t.get("status") or "?"
        heading = f"trial {labels[tid]} ({status})"
        if t.get("error"):
            heading += "\n" + textwrap.shorten(str(t["error"]), 100)
        figures.trial_figure(by_trial.get(tid, []), fig_dir / fig_names[tid], target=t.get("target"),
                             reset_at=reset_at[tid], title=heading)
    for stale in fig_dir.glob("trial-*.png"):  # trials no longer in the table
        if stale.name not in fig_names.values():
            stale.unlink()
    figures.overlay_figure({t["trial_id"]: by_trial.get(t["trial_id"], []) for t in ranked},
                           fig_dir / "overlay.png", reset_at=reset_at, labels=labels, title=title)
    figures.frontier_figure(ranked, fig_dir / "frontier.png", labels=ids, title=title)

    _write_text(d / SUMMARY, _summary_md(title, ranked, varied, short, ids, fig_names))

    if console is None:
        from rich.console import Console

        console = Console() if sys.stdout.isatty() else Console(width=160)  # logs keep whole rows
    if console is not False:
        console.print(_rich_table(title, ranked, varied, short, ids))
    return ranked


def run(args) -> int:
    """``tightrope report DIR``."""
    import pyarrow as pa

    from orchestrator.cli import UsageError

    d = Path(args.dir)
    if not d.is_dir():
        raise UsageError(f"{d}: no such folder (give a sweep's results folder)")
    missing = [f for f in (TRIALS, EVALS) if not (d / f).is_file()]
    if missing:
        raise UsageError(f"{d} has no {' or '.join(missing)}: not a sweep results folder "
                         "(`tightrope sweep` writes these files)")
    try:
        build(d)
    except pa.ArrowException as e:  # not Parquet, or truncated
        raise UsageError(f"cannot read the results in {d}: {e}") from e
    print(f"wrote {d / SUMMARY} and {d / FIGURES}/")
    return 0
