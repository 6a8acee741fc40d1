"""A driver killed mid-sweep (SIGKILL, no chance to clean up) and then `--resume`d ends with exactly the spec's
trials: finished ones kept as they were, unfinished ones continued, none lost or run twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import yaml

from tests.sweep_helpers import ROOT, read_rows, set_test_env, smoke_spec


def _finished(exp_dir) -> dict[str, float]:
    """trial folder -> its start time, for trials whose result.json holds the final report."""
    out = {}
    for f in exp_dir.glob("*/result.json"):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            if row.get("status") == "completed":
                out[f.parent.name] = row["time/started_at"]
    return out


def test_killed_driver_then_resume(tmp_path):
    set_test_env(tmp_path / "cache")
    spec = smoke_spec(tmp_path / "store", name="resume", max_concurrent=1, wandb={"mode": "disabled"})
    spec_file = tmp_path / "resume.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    cmd = [sys.executable, "-m", "orchestrator.cli", "sweep", str(spec_file), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    exp_dir = tmp_path / "store" / "resume"

    driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not _finished(exp_dir) and time.time() < deadline and driver.poll() is None:
        time.sleep(0.5)
    before = _finished(exp_dir)
    assert before, "no trial finished before the deadline"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, at once
    driver.wait()
    assert len(before) < spec.n_trials(), "the sweep finished before it could be interrupted"

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 2 and "--resume" in again.stderr  # an existing sweep is never overwritten

    edited = spec.model_dump(mode="json")
    edited["trial"]["train"]["steps"] += 20
    edited_file = tmp_path / "edited.yaml"
    edited_file.write_text(yaml.safe_dump(edited, sort_keys=False))
    refused = subprocess.run(cmd[:4] + [str(edited_file), "--resume"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=400)
    assert refused.returncode == 2 and "trial.train.steps" in refused.stderr  # an edited spec is not resumed

    resumed = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = read_rows(exp_dir / "trials.parquet")
    assert len(trials) == spec.n_trials()
    assert len({t["trial_id"] for t in trials}) == spec.n_trials()
    assert {t["status"] for t in trials} == {"completed"}
    after = _finished(exp_dir)
    for trial_dir, started in before.items():
        assert after[trial_dir] == started  # a finished trial was not run again
    evals = read_rows(exp_dir / "evals.parquet")
    keys = [(r["trial_id"], r["step"]) for r in evals]
    assert len(keys) == len(set(keys))
