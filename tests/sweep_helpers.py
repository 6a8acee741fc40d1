"""Shared pieces of the Ray sweep tests: the smoke spec pointed at a temporary folder, and result readers."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "sweeps" / "smoke.yaml"
MiB = 1024**2


def set_test_env(cache_dir: Path) -> None:
    """Environment every Ray test module sets before starting Ray."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    os.environ["TIGHTROPE_CACHE"] = str(cache_dir)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def smoke_spec(storage: Path | str, *, name: str = "smoke", space: dict | None = None, trial: dict | None = None,
               endpoint: str | None = None, **fields):
    """The smoke spec with its storage moved, its space or trial settings replaced, other fields changed."""
    from orchestrator.spec import SweepSpec, load_spec
    from trainables.config import set_dotted

    data = copy.deepcopy(load_spec(SMOKE).model_dump(mode="json"))
    data["name"] = name
    data["storage"].update(path=str(storage), endpoint=endpoint)
    if space is not None:
        data["space"] = space
    for key, value in (trial or {}).items():  # dotted keys into the (nested) trial block
        set_dotted(data["trial"], key, value)
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return SweepSpec.from_dict(data)


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def by_trial(evals: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in evals:
        out.setdefault(row["trial_id"], []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: r["step"])
    return out
