"""A sweep's result tables: ``evals.parquet`` (one row per trial x evaluation) and ``trials.parquet`` (one row
per trial), written and read with pyarrow only, so ``tightrope report`` needs no Ray.

Columns follow the metric vocabulary (DESIGN section 5). ``evals``: ``trial_id`` + ``step``, ``val/ce``,
``train/ce``, ``target``, ``violation``, ``lambda``, ``density``, ``lr``, ``tokens_per_s``. ``trials``:
``trial_id``, ``status``, ``error``, ``final/density``, ``final/val_ce``, ``target``, ``tracking_error``,
``feasible``, ``objective``, times, ``retries`` and the trial config as ``config/<dotted.key>``.

Column types come from the vocabulary and from the ``TrialConfig`` field types (so ``config/reset.at`` is a
nullable int64 even when every trial has ``null``, and ``config/reset.parts`` is ``list<string>``); any other
column's type is inferred from its values (ints and floats -> float64, dicts -> JSON text).

Ranking (``rank``): completed feasible trials by ``final/density`` ascending, then completed infeasible ones
by final violation ``final/val_ce - target`` ascending, then trials stopped early (same two tiers), then failed
trials. NaN or missing values sort last within their tier; ties go by ``trial_id``.
"""

from __future__ import annotations

import json
import math
import os
import types
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from trainables.config import TrialConfig
from trainables.metrics import VOCAB

EVALS = "evals.parquet"
TRIALS = "trials.parquet"

METRICS = tuple(VOCAB)  # the per-evaluation vocabulary, defined once in trainables.metrics
EVAL_COLUMNS = ("trial_id", *METRICS)
STATUSES = ("completed", "failed", "stopped")
SUMMARY_KEYS = ("final/density", "final/val_ce", "target", "tracking_error", "feasible", "objective")
CONFIG_PREFIX = "config/"

_TS = pa.timestamp("us", tz="UTC")
KNOWN_TYPES: dict[str, pa.DataType] = {
    "trial_id": pa.string(),
    "step": pa.int64(),
    **{m: pa.float64() for m in METRICS if m != "step"},
    "status": pa.string(),
    "error": pa.string(),
    "final/density": pa.float64(),
    "final/val_ce": pa.float64(),
    "tracking_error": pa.float64(),
    "feasible": pa.bool_(),
    "objective": pa.float64(),
    "started_at": _TS,
    "ended_at": _TS,
    "wall_s": pa.float64(),
    "train_s": pa.float64(),
    "retries": pa.int64(),
}


# --- column types -------------------------------------------------------------------------------------------


def _type_of(ann: Any) -> pa.DataType | None:
    """Arrow type of a pydantic field annotation; None when there is no sensible fixed type."""
    origin, args = get_origin(ann), get_args(ann)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _type_of(inner[0]) if len(inner) == 1 else None
    if origin is Literal:
        kinds = {type(a) for a in args}
        return _type_of(kinds.pop()) if len(kinds) == 1 else None
    if origin is list:
        inner = _type_of(args[0]) if args else None
        return pa.list_(inner) if inner is not None else None
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}.get(ann)


@cache
def config_types() -> dict[str, pa.DataType]:
    """``{"config/reset.at": int64, ...}`` from the TrialConfig tree."""
    out: dict[str, pa.DataType] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
            elif (t := _type_of(ann)) is not None:
                out[f"{CONFIG_PREFIX}{prefix}{name}"] = t

    walk(TrialConfig, "")
    return out


def _plain(v: Any) -> Any:
    """numpy / torch scalars -> Python scalars; tuples -> lists."""
    if isinstance(v, tuple):
        return list(v)
    if not isinstance(v, (str, bytes, list, dict)) and hasattr(v, "item"):
        try:
            return v.item()
        except (TypeError, ValueError):
            return v
    return v


def _timestamp(v: Any) -> datetime | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, datetime):
        return v if v.tzinfo else v.astimezone(UTC)
    if isinstance(v, (int, float)):
        return datetime.fromtimestamp(v, UTC)
    d = datetime.fromisoformat(str(v))
    return d if d.tzinfo else d.astimezone(UTC)


def _json(v: Any) -> str | None:
    return None if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


def _infer(values: list) -> pa.Array:
    """An array for a column without a declared type."""
    present = [v for v in values if v is not None]
    if not present:
        return pa.nulls(len(values))
    if all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, pa.int64())
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if all(isinstance(v, str) for v in present):
        return pa.array(values, pa.string())
    if all(isinstance(v, datetime) for v in present):
        return pa.array([_timestamp(v) for v in values], _TS)
    if all(isinstance(v, list) for v in present):
        items = [x for v in present for x in v]
        if all(isinstance(x, str) for x in items):
            return pa.array(values, pa.list_(pa.string()))
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items):
            return pa.array([None if v is None else [float(x) for x in v] for v in values],
                            pa.list_(pa.float64()))
    return pa.array([_json(v) for v in values], pa.string())


def _column(name: str, values: list) -> pa.Array:
    values = [_plain(v) for v in values]
    t = KNOWN_TYPES.get(name) or config_types().get(name)
    if t is None:
        return _infer(values)
    try:
        if t == _TS:
            return pa.array([_timestamp(v) for v in values], t)
        if t == pa.string():
            return pa.array([_json(v) for v in values], t)
        if t == pa.float64():
            return pa.array([None if v is None else float(v) for v in values], t)
        if pa.types.is_list(t) and pa.types.is_string(t.value_type):
            values = [[v] if isinstance(v, str) else v for v in values]  # reset.parts=lambda
        return pa.array(values, t)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return _infer(values)  # a value the declared type cannot hold: keep it rather than fail the sweep


# --- tables --------------------------------------------------------------------------------------------------


def to_table(rows: list[dict], columns: list[str] | tuple[str, ...] | None = None) -> pa.Table:
    """A typed Arrow table; ``columns`` come first (and exist even when ``rows`` is empty)."""
    names: dict[str, None] = dict.fromkeys(columns or ())
    for r in rows:
        names.update(dict.fromkeys(r))
    arrays = [_column(n, [r.get(n) for r in rows]) for n in names]
    if not rows and names:  # an empty table still gets its declared types
        arrays = [pa.array([], KNOWN_TYPES.get(n) or config_types().get(n) or pa.null()) for n in names]
    return pa.Table.from_arrays(arrays, names=list(names))


def write_table(rows: list[dict], path, *, columns: list[str] | tuple[str, ...] | None = None) -> Path:
    """Write ``rows`` as Parquet, atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = to_table(rows, columns)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_table(path) -> list[dict]:
    """Rows as dicts (nulls -> None, timestamps -> aware datetimes, list columns -> lists)."""
    return pq.read_table(path).to_pylist()


# --- rows ----------------------------------------------------------------------------------------------------


def eval_row(trial_id: str, metrics: dict) -> dict:
    """One ``evals.parquet`` row: the vocabulary columns of ``metrics`` (missing ones None) + ``trial_id``."""
    return {"trial_id": str(trial_id), **{m: _plain(metrics.get(m)) for m in METRICS}}


def trial_row(trial_id: str, config: dict[str, Any], summary: dict[str, Any] | None, status: str,
              error: str | None = None, *, started_at: Any = None, ended_at: Any = None,
              wall_s: float | None = None, train_s: float | None = None, retries: int = 0, **extra: Any) -> dict:
    """One ``trials.parquet`` row.

    ``config``: the flat dotted config (``TrialConfig.flat()``), stored as ``config/<key>``. ``summary``:
    ``final/density``, ``final/val_ce``, ``tracking_error``, ``feasible``, ``objective`` and ideally the resolved
    ``target`` (missing keys -> None); other ``final/*`` keys are kept too, anything else in it (e.g. the rest of
    a Ray result) is not. ``started_at`` / ``ended_at``: unix seconds, ISO text or datetimes. ``status``: one
    of ``completed | failed | stopped``. ``extra``: more columns, e.g. ``node_id="..."``.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
    summary = summary or {}
    row: dict[str, Any] = {"trial_id": str(trial_id), "status": status, "error": error}
    row.update({k: _plain(summary.get(k)) for k in SUMMARY_KEYS})
    row.update({k: _plain(v) for k, v in summary.items() if k.startswith("final/") and k not in row})
    row.update(started_at=_timestamp(started_at), ended_at=_timestamp(ended_at), wall_s=wall_s,
               train_s=train_s, retries=int(retries))
    row.update({k: _plain(v) for k, v in extra.items()})
    row.update({f"{CONFIG_PREFIX}{k}": _plain(v) for k, v in config.items()})
    return row


# --- ranking -------------------------------------------------------------------------------------------------


def as_float(v: Any) -> float:
    """A float, or NaN for None and non-numbers."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


def _finite_or_inf(v: Any) -> float:
    x = as_float(v)
    return x if math.isfinite(x) else math.inf


def is_feasible(row: dict) -> bool:
    """``feasible`` is true (None, NaN and anything falsy are not)."""
    v = row.get("feasible")
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and bool(v)


def violation(row: dict) -> float:
    """Final violation ``final/val_ce - target`` in nats (NaN when unknown)."""
    v = as_float(row.get("final/val_ce")) - as_float(row.get("target"))
    return v if math.isfinite(v) else as_float(row.get("final/violation"))


def _rank_key(row: dict) -> tuple:
    status = row.get("status")
    tier = 3 if status == "failed" else 2 if status == "stopped" else 0
    if tier == 3:
        return (3, 0, 0.0, str(row.get("trial_id")))
    feasible = is_feasible(row)
    value = row.get("final/density") if feasible else violation(row)
    return (tier, 0 if feasible else 1, _finite_or_inf(value), str(row.get("trial_id")))


def rank(trials: list[dict]) -> list[dict]:
    """Best first; see the module docstring. Returns new list, the rows themselves are not copied."""
    return sorted(trials, key=_rank_key)


def best(trials: list[dict]) -> dict | None:
    """The top-ranked trial that did not fail (None when every trial failed)."""
    for r in rank(trials):
        if r.get("status") != "failed":
            return r
    return None
