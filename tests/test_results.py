"""Result tables (pyarrow round trips, types, atomic writes), ranking, and ``tightrope report``."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import report, results
from orchestrator.cli import main
from trainables.config import resolve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _curve(n: int, *, d_end: float, target: float, reset_at: int | None = None, every: int = 20) -> list[dict]:
    """Hand-made evaluations: density decays to d_end, lambda rises, val CE wobbles around the target."""
    rows = []
    for i in range(n):
        step = i * every
        frac = i / max(n - 1, 1)
        density = 0.2 * (d_end / 0.2) ** frac
        if reset_at is not None and step >= reset_at:
            density *= 1.5
        ce = target + 0.01 * math.sin(i)
        rows.append({"step": step, "val/ce": ce, "train/ce": ce + 0.02, "target": target,
                     "violation": ce - target, "lambda": 1e-2 * 10 ** (3 * frac), "density": density,
                     "lr": 3e-4, "tokens_per_s": 5000.0})
    return rows


def _sweep_dir(tmp: Path) -> Path:
    """Four trials: two feasible (different density), one infeasible, one failed with no evaluations."""
    specs = {  # trial id -> (overrides, summary, status, error)
        "exp_00000": ({"controller.k_i": 10.0, "reset.at": None},
                      {"final/density": 0.05, "final/val_ce": 1.75, "tracking_error": 0.004, "feasible": True,
                       "objective": math.log(0.05)}, "completed", None),
        "exp_00001": ({"controller.k_i": 30.0, "reset.at": 100, "reset.parts": ["lambda", "optimizer"]},
                      {"final/density": 0.02, "final/val_ce": 1.749, "tracking_error": 0.006, "feasible": True,
                       "objective": math.log(0.02)}, "completed", None),
        "exp_00002": ({"controller.k_i": 100.0, "reset.at": None},
                      {"final/density": 0.005, "final/val_ce": 1.9, "tracking_error": 0.1, "feasible": False,
                       "objective": 100.0}, "completed", None),
        "exp_00003": ({"controller.k_i": 30.0, "reset.at": 100},
                      {}, "failed", "val/ce is NaN at step 40"),
    }
    trials, evals = [], []
    t0 = time.time()
    for tid, (over, summary, status, err) in specs.items():
        cfg = resolve({"train.steps": 300, "target.value": 1.75, **over})
        trials.append(results.trial_row(tid, cfg.flat(), summary, status, err, started_at=t0, ended_at=t0 + 60,
                                        wall_s=60.0, train_s=57.5, retries=1 if status == "failed" else 0))
        if status != "failed":
            d_end = summary["final/density"]
            evals += [results.eval_row(tid, r) for r in _curve(15, d_end=d_end, target=1.75,
                                                                   reset_at=over.get("reset.at"))]
    results.write_table(trials, tmp / results.TRIALS)
    results.write_table(evals, tmp / results.EVALS, columns=results.EVAL_COLUMNS)
    return tmp


# --- tables --------------------------------------------------------------------------------------------------


def test_trials_roundtrip_values_and_types(tmp_path):
    _sweep_dir(tmp_path)
    schema = pq.read_schema(tmp_path / results.TRIALS)
    assert schema.field("config/controller.k_i").type == pa.float64()
    assert schema.field("config/reset.at").type == pa.int64()
    assert schema.field("config/reset.parts").type == pa.list_(pa.string())
    assert schema.field("config/train.steps").type == pa.int64()
    assert schema.field("config/controller.anti_windup").type == pa.bool_()
    assert schema.field("config/target.delta").type == pa.float64()  # null in every row, still typed
    assert schema.field("feasible").type == pa.bool_()
    assert schema.field("final/density").type == pa.float64()
    assert schema.field("retries").type == pa.int64()
    assert pa.types.is_timestamp(schema.field("started_at").type)

    rows = {r["trial_id"]: r for r in results.read_table(tmp_path / results.TRIALS)}
    assert set(rows) == {"exp_00000", "exp_00001", "exp_00002", "exp_00003"}
    a, b, f = rows["exp_00000"], rows["exp_00001"], rows["exp_00003"]
    assert a["config/reset.at"] is None and b["config/reset.at"] == 100
    assert b["config/reset.parts"] == ["lambda", "optimizer"]
    assert a["config/reset.parts"] == ["lambda", "controller"]
    assert b["config/controller.k_i"] == 30.0 and b["config/target.value"] == 1.75
    assert b["final/density"] == 0.02 and b["feasible"] is True and rows["exp_00002"]["feasible"] is False
    assert f["status"] == "failed" and f["error"] == "val/ce is NaN at step 40"
    assert f["final/density"] is None and f["feasible"] is None and f["retries"] == 1
    assert isinstance(a["started_at"], datetime) and a["ended_at"] - a["started_at"] == (
        datetime.fromtimestamp(60, UTC) - datetime.fromtimestamp(0, UTC))


def test_evals_roundtrip_nan_and_none(tmp_path):
    rows = [results.eval_row("t", {"step": 20, "val/ce": float("nan"), "density": 0.1, "lambda": 2}),
            results.eval_row("t", {"step": 40, "val/ce": 2.0, "extra": 5})]
    path = results.write_table(rows, tmp_path / results.EVALS)
    table = pq.read_table(path)
    assert table.column_names == list(results.EVAL_COLUMNS)  # vocabulary only, 'extra' dropped
    assert table.schema.field("step").type == pa.int64()
    assert table.schema.field("lambda").type == pa.float64()  # an int lambda is still a float column
    back = results.read_table(path)
    assert math.isnan(back[0]["val/ce"])  # NaN stays NaN (a measurement), not null
    assert back[1]["density"] is None and back[0]["lambda"] == 2.0 and back[1]["step"] == 40


def test_empty_table_keeps_declared_types(tmp_path):
    path = results.write_table([], tmp_path / "e.parquet", columns=results.EVAL_COLUMNS)
    schema = pq.read_schema(path)
    assert schema.names == list(results.EVAL_COLUMNS)
    assert schema.field("step").type == pa.int64() and schema.field("val/ce").type == pa.float64()
    assert results.read_table(path) == []


def test_undeclared_columns_are_inferred(tmp_path):
    rows = [{"a": 1, "b": {"x": 1}, "c": [1, 2.5], "d": "s", "e": None},
            {"a": 2.5, "b": None, "c": None, "d": None, "e": None}]
    path = results.write_table(rows, tmp_path / "x.parquet")
    schema = pq.read_schema(path)
    assert schema.field("a").type == pa.float64()
    assert schema.field("b").type == pa.string()
    assert schema.field("c").type == pa.list_(pa.float64())
    back = results.read_table(path)
    assert back[0]["b"] == '{"x": 1}' and back[0]["c"] == [1.0, 2.5] and back[1]["a"] == 2.5


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    results.write_table([{"trial_id": "old", "step": 1}], path)

    def broken(table, where, **kw):
        Path(where).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        results.write_table([{"trial_id": "new", "step": 2}], path)
    monkeypatch.undo()
    assert results.read_table(path) == [{"trial_id": "old", "step": 1}]
    assert sorted(os.listdir(tmp_path)) == ["t.parquet"]  # no temporary file left behind

    results.write_table([{"trial_id": "new", "step": 2}], path)  # and a good write replaces it
    assert results.read_table(path) == [{"trial_id": "new", "step": 2}]


def test_trial_row_checks_status_and_prefixes_config():
    ray_result = {"final/density": 0.1, "final/violation": -0.01, "val/ce": 2.0, "hostname": "h", "config": {}}
    row = results.trial_row("x", {"controller.k_i": 3.0}, ray_result, "stopped", node_id="n1")
    assert row["config/controller.k_i"] == 3.0 and row["final/val_ce"] is None and row["node_id"] == "n1"
    assert row["final/density"] == 0.1 and row["final/violation"] == -0.01
    assert not {"val/ce", "hostname", "config"} & set(row)  # the rest of a Ray result is not a column
    with pytest.raises(ValueError, match="status"):
        results.trial_row("x", {}, {}, "running")


# --- ranking -------------------------------------------------------------------------------------------------


def _t(tid, status="completed", feasible=None, density=None, ce=None, target=2.0):
    return {"trial_id": tid, "status": status, "feasible": feasible, "final/density": density,
            "final/val_ce": ce, "target": target}


def test_rank_order_with_nan_and_failed():
    nan = float("nan")
    trials = [
        _t("fail-a", "failed", density=nan, ce=nan),
        _t("inf-far", feasible=False, density=0.001, ce=2.5),
        _t("feas-nan", feasible=True, density=nan, ce=1.9),
        _t("stopped", "stopped", feasible=True, density=0.0001, ce=1.99),
        _t("feas-hi", feasible=True, density=0.05, ce=1.99),
        _t("inf-nan", feasible=False, density=0.01, ce=nan),
        _t("feas-lo", feasible=True, density=0.002, ce=2.0),
        _t("inf-near", feasible=False, density=0.01, ce=2.01),
        _t("feas-none", feasible=None, density=0.0001, ce=2.2),  # unknown feasibility is not feasible
        _t("fail-b", "failed", feasible=True, density=0.00001, ce=1.0),  # a failed trial never wins
    ]
    order = [r["trial_id"] for r in results.rank(trials)]
    assert order == ["feas-lo", "feas-hi", "feas-nan", "inf-near", "feas-none", "inf-far", "inf-nan",
                     "stopped", "fail-a", "fail-b"]
    assert results.best(trials)["trial_id"] == "feas-lo"
    assert results.best([_t("f", "failed")]) is None
    assert math.isclose(results.violation(trials[1]), 0.5)


# --- tightrope report ----------------------------------------------------------------------------------------


def test_report_rebuilds_figures_and_summary(tmp_path, capsys):
    d = _sweep_dir(tmp_path)
    (d / "figures").mkdir()
    (d / "figures" / "trial-gone.png").write_bytes(PNG_MAGIC)  # a trial no longer in the table
    (d / "sweep.json").write_text('{"name": "unit-sweep", "n_trials": 4}')
    assert main(["report", str(d)]) == 0
    out = capsys.readouterr().out
    pos = [out.find(f" {t} ") for t in ("00001", "00000", "00002", "00003")]  # the ranked table printed
    assert -1 not in pos and pos == sorted(pos), out

    expected = ["exp_00001", "exp_00000", "exp_00002", "exp_00003"]
    names = [f"trial-{t}.png" for t in expected] + ["overlay.png", "frontier.png"]
    for n in names:
        data = (d / "figures" / n).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, n
    assert sorted(p.name for p in (d / "figures").iterdir()) == sorted(names)

    summary = (d / "summary.md").read_text()
    assert summary.startswith("# Sweep unit-sweep")
    assert "trials: 4 · completed: 3 · feasible: 2 · failed: 1" in summary
    assert "**Best trial:** `exp_00001`" in summary
    table = [ln for ln in summary.splitlines() if ln.startswith("| ") and "exp_" not in ln]
    header = table[0]
    assert "controller.k_i" in header and "reset.at" in header and "reset.parts" in header
    assert "train.steps" not in header  # not varied
    body = [ln for ln in summary.splitlines() if ln.startswith("| ") and ln != header]
    assert [ln.split("|")[2].strip() for ln in body] == ["00001", "00000", "00002", "00003"]
    assert "| 1 | 00001 | 30 | 100 | lambda+optimizer | 0.02 | 1.7490 | 1.7500 |" in summary
    assert "val/ce is NaN at step 40" in summary
    assert "(figures/trial-exp_00003.png)" in summary


def test_report_fills_target_from_evals(tmp_path):
    d = _sweep_dir(tmp_path)
    rows = results.read_table(d / results.TRIALS)
    for r in rows:
        r["target"] = None
    results.write_table(rows, d / results.TRIALS)
    ranked = report.build(d, console=False)
    assert [r["target"] for r in ranked[:3]] == [1.75, 1.75, 1.75] and ranked[3]["target"] is None


def test_report_when_every_trial_failed(tmp_path):
    rows = [results.trial_row(t, {"controller.k_i": k}, None, "failed", "boom") for t, k in (("a", 1.0), ("b", 2.0))]
    results.write_table(rows, tmp_path / results.TRIALS)
    results.write_table([], tmp_path / results.EVALS)  # no columns at all
    ranked = report.build(tmp_path, console=False)
    assert [r["trial_id"] for r in ranked] == ["a", "b"]
    summary = (tmp_path / "summary.md").read_text()
    assert "feasible: 0 · failed: 2" in summary and "**Best trial:** none" in summary
    assert all((tmp_path / "figures" / n).stat().st_size > 1000 for n in ("overlay.png", "frontier.png", "trial-a.png"))


def test_report_bad_dirs_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "trials.parquet" in err and "evals.parquet" in err
    (tmp_path / results.TRIALS).write_bytes(b"not parquet")
    (tmp_path / results.EVALS).write_bytes(b"not parquet")
    assert main(["report", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_report_never_imports_ray(tmp_path):
    d = _sweep_dir(tmp_path)
    code = ("import sys; from orchestrator.cli import main; rc = main(['report', sys.argv[1]]); "
            "bad = [m for m in ('ray', 'wandb') if m in sys.modules]; "
            "print('LOADED', bad); sys.exit(rc or (3 if bad else 0))")
    proc = subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LOADED []" in proc.stdout
