"""The W&B callback under a real embedded Ray: what the offline ``.wandb`` files hold afterwards."""

import json
import os
import sys
import tempfile

import pytest

SECRET = "wb-test-secret-0123456789abcdef0123456789abcdef"
os.environ["WANDB_MODE"] = "offline"  # before ray.init, as RAY_NOTES says
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["WANDB_SILENT"] = "true"

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from orchestrator.wandb_log import WandbRunCallback, flat_config, is_failure  # noqa: E402
from orchestrator.wandb_offline import find_runs, iter_payloads, read_run  # noqa: E402

STEPS = (10, 20, 30, 40, 50)


def value(step: int, x: float, attempt: int) -> float:
    return 2.0 + step / 1000 + x + attempt / 1e4  # attempt tells a retry's re-report from the original


def trainable(config):
    """Reports every 10 steps; checkpoints at 20 and 40. ``mode`` picks the behaviour under test."""
    start, attempt = 0, 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d, open(os.path.join(d, "state.json")) as f:
            start, attempt = json.load(f)["step"], 1
    mode = config["mode"]
    for step in STEPS:
        if step <= start:
            continue
        if mode == "flaky" and attempt == 0 and step == 40:
            raise RuntimeError("flaky: crash before step 40")
        if mode == "raise" and step == 30:
            raise ValueError("boom at step 30")
        ce = value(step, config["x"], attempt)
        m = {"step": step, "val/ce": ce, "train/ce": ce - 0.1, "target": 2.0, "violation": ce - 2.0,
             "lambda": 0.01 * step, "density": 1.0 / step, "lr": 3e-4, "tokens_per_s": 1000.0,
             "not_a_metric": 7}
        if step == STEPS[-1]:
            m.update({"final/density": 1.0 / step, "final/val_ce": ce, "tracking_error": 0.005,
                      "feasible": mode != "nan", "status": "failed: val CE is NaN" if mode == "nan" else "ok"})
        if step in (20, 40):
            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, "state.json"), "w") as f:
                    json.dump({"step": step}, f)
                tune.report(m, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(m)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One Tuner run of four trials with the callback in offline mode; yields the runs read back."""
    tmp = tmp_path_factory.mktemp("wandb")
    os.environ["WANDB_API_KEY"] = SECRET  # present in the environment: must not leak anywhere
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/ modules
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2, log_to_driver=False)
    try:
        cb = WandbRunCallback(project="tightrope-test", group="sweep-abc", mode="offline", dir=tmp / "wb")
        space = {
            "mode": tune.grid_search(["ok", "raise", "flaky", "nan"]),
            "x": 0.25,
            "wandb": {"api_key": SECRET, "project": "p"},  # secret by key name
            "db": {"password": "hunter22", "host": "h"},
            "note": f"token={SECRET}",  # secret by value
        }
        tuner = tune.Tuner(
            trainable, param_space=space,
            run_config=tune.RunConfig(name="sweep-abc", storage_path=str(tmp / "ray"), callbacks=[cb], verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=1)),
            tune_config=tune.TuneConfig(max_concurrent_trials=2, reuse_actors=True))
        grid = tuner.fit()
        runs = {}
        for path in find_runs(tmp / "wb"):
            run = read_run(path)
            runs[run.config["mode"]] = run
        yield {"runs": runs, "paths": find_runs(tmp / "wb"), "grid": grid, "cb": cb, "tmp": tmp}
    finally:
        os.environ.pop("WANDB_API_KEY", None)
        ray.shutdown()


def test_one_run_per_trial_grouped_by_sweep(sweep):
    runs, grid = sweep["runs"], sweep["grid"]
    assert len(sweep["paths"]) == 4 and sorted(runs) == ["flaky", "nan", "ok", "raise"]
    trial_ids = {r.metrics["trial_id"] for r in grid}
    assert {r.run_id for r in runs.values()} == trial_ids
    for r in runs.values():
        assert r.group == "sweep-abc" and r.project == "tightrope-test" and r.name == r.run_id
        assert r.config["trial_id"] == r.run_id
    assert sweep["cb"].errors == []


def test_exact_metric_values_per_step(sweep):
    run = sweep["runs"]["ok"]
    assert run.steps == list(STEPS)
    for row, step in zip(run.history, STEPS, strict=True):
        ce = value(step, 0.25, 0)
        assert row["val/ce"] == ce and row["train/ce"] == ce - 0.1 and row["violation"] == ce - 2.0
        assert row["lambda"] == 0.01 * step and row["density"] == 1.0 / step
        assert row["target"] == 2.0 and row["lr"] == 3e-4 and row["tokens_per_s"] == 1000.0
        assert "not_a_metric" not in row and "final/density" not in row


def test_summary_and_exit_code_of_a_finished_trial(sweep):
    run = sweep["runs"]["ok"]
    s = run.summary
    assert s["final/density"] == 1.0 / 50 and s["final/val_ce"] == value(50, 0.25, 0)
    assert s["tracking_error"] == 0.005 and s["feasible"] is True and s["status"] == "ok"
    assert s["retries"] == 0
    assert run.exit_code == 0


def test_failed_status_finishes_with_nonzero_exit(sweep):
    run = sweep["runs"]["nan"]
    assert run.summary["status"] == "failed: val CE is NaN" and run.summary["feasible"] is False
    assert run.exit_code == 1


def test_trial_that_raises_shows_failed(sweep):
    run = sweep["runs"]["raise"]
    assert run.exit_code not in (None, 0)
    assert run.summary["status"] == "failed"
    assert "boom at step 30" in run.summary["error"]
    assert run.summary["retries"] == 1  # FailureConfig(max_failures=1): retried once, failed again
    # the retry started from scratch and re-reported 10 and 20: each is logged once
    assert run.steps == [10, 20]


def test_retried_trial_logs_no_step_twice(sweep):
    run = sweep["runs"]["flaky"]
    assert run.steps == list(STEPS)  # 30 was reported twice (before the crash and after the restore)
    by_step = {h["_step"]: h for h in run.history}
    assert by_step[30]["val/ce"] == value(30, 0.25, 0)  # the first report of step 30 is the one kept
    assert by_step[40]["val/ce"] == value(40, 0.25, 1)  # later steps come from the retry
    assert run.exit_code == 0 and run.summary["status"] == "ok" and run.summary["retries"] == 1


def test_no_secret_in_config_or_files(sweep):
    for run in sweep["runs"].values():
        assert not any("api_key" in k or "password" in k for k in run.config)
        assert "note" not in run.config and run.config["db.host"] == "h" and run.config["x"] == 0.25
        assert run.config["wandb.project"] == "p"
    files = [f for f in (sweep["tmp"] / "wb").rglob("*") if f.is_file() and not f.is_symlink()]
    assert len(files) >= 8  # the .wandb files and W&B's own logs
    for f in files:
        data = f.read_bytes()
        assert SECRET.encode() not in data and b"hunter22" not in data, f


def test_reader_rejects_non_wandb_and_flags_truncation(sweep):
    data = sweep["paths"][0].read_bytes()
    with pytest.raises(ValueError):
        iter_payloads(b"not a wandb file")
    full, truncated = iter_payloads(data)
    assert not truncated
    cut, truncated = iter_payloads(data[: len(data) - 3])
    assert truncated and len(cut) == len(full) - 1


def test_helpers():
    assert is_failure("failed") and is_failure("failed: NaN") and is_failure("error")
    assert not is_failure("ok") and not is_failure("stopped") and not is_failure(None)
    flat = flat_config({"a": {"b": 1, "token": "t"}, "c": (1, 2), "d": object}, secrets=["s3cr3t-value"])
    assert flat == {"a.b": 1, "c": [1, 2], "d": repr(object)}
    assert flat_config({"e": "x s3cr3t-value y"}, secrets=["s3cr3t-value"]) == {}
