"""The smoke sweep end to end on a real embedded Ray, with W&B offline files read back."""

from __future__ import annotations

import math

import pytest

from tests.sweep_helpers import ROOT, MiB, by_trial, read_rows, set_test_env, smoke_spec


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    set_test_env(tmp_path_factory.mktemp("cache"))
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=256 * MiB,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()


def test_smoke_sweep_writes_parquet_and_matching_wandb_runs(ray_local, tmp_path, monkeypatch):
    from orchestrator.sweep import run_sweep
    from orchestrator.wandb_offline import find_runs, read_run

    secrets = ["wandb-sekrit-0123456789abcdef", "aws-sekrit-0123456789abcdef"]
    monkeypatch.setenv("WANDB_API_KEY", secrets[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets[1])
    spec = smoke_spec(tmp_path / "store")
    out = run_sweep(spec, quiet=True)
    d = out["results_dir"]
    for f in (tmp_path / "store").rglob("*"):  # tuner.pkl, Tune state, results, W&B files: no secret anywhere
        if f.is_file():
            data = f.read_bytes()
            assert not any(s.encode() in data for s in secrets), f
    trials = read_rows(d / "trials.parquet")
    evals = read_rows(d / "evals.parquet")
    assert len(trials) == spec.n_trials() >= 4
    assert {t["status"] for t in trials} == {"completed"}
    cfg = spec.trial_config()
    n_evals = cfg.train.steps // cfg.eval.every + 1  # step 0 included
    per_trial = by_trial(evals)
    assert set(per_trial) == {t["trial_id"] for t in trials}
    for rows in per_trial.values():
        assert [r["step"] for r in rows] == [i * cfg.eval.every for i in range(n_evals)]
        assert all(math.isclose(r["violation"], r["val/ce"] - r["target"], abs_tol=1e-6) for r in rows)
    for name in ("summary.md", "figures/overlay.png", "figures/frontier.png"):
        assert (d / name).stat().st_size > 0

    runs = {r.name: r for r in map(read_run, find_runs(d))}
    assert len(runs) == len(trials)
    for trial in trials:
        run = next(r for r in runs.values() if trial["trial_id"] in (r.name, r.run_id) or trial["trial_id"] in r.name)
        assert run.group == spec.name
        logged = {int(h["_step"]): h for h in run.history if "density" in h}
        rows = per_trial[trial["trial_id"]]
        assert sorted(logged) == [r["step"] for r in rows]
        for r in rows:
            for key in ("lambda", "density", "val/ce", "target"):
                assert logged[r["step"]][key] == pytest.approx(r[key], rel=1e-6)
        assert run.summary["final/density"] == pytest.approx(trial["final/density"], rel=1e-6)
        assert run.summary["status"] == "completed"
        assert run.exit_code == 0
        assert run.config["train.steps"] == spec.trial_config().train.steps  # the whole config, not only the space


def test_retry_resumes_exactly_and_nan_trial_fails_alone(ray_local, tmp_path):
    """Three trials that differ only in their task: plain, one that raises once mid-run (retried from its last
    checkpoint), and one whose val CE turns NaN. The retried trial's lambda trajectory must equal the plain
    one's exactly; the NaN trial ends failed with a reason; the best trial is still chosen."""
    from orchestrator.results import rank
    from orchestrator.sweep import run_sweep
    from orchestrator.wandb_offline import find_runs, read_run

    marker = tmp_path / "flaky-failed-once"
    spec = smoke_spec(tmp_path / "store", name="faults", space={
        "task.name": {"grid": ["sparse_attention", "tests.plugins:FlakyTask", "tests.plugins:NaNTask"]}},
        trial={"task.options": {"fail_at": 35, "marker": str(marker), "nan_at": 30}, "reset.at": None},
        failure={"retries": 1}, checkpoint={"every": 2, "keep": 2})
    out = run_sweep(spec, quiet=True)
    trials = {t["config/task.name"]: t for t in out["trials"]}
    evals = by_trial(out["evals"])
    assert marker.exists()  # the flaky trial did fail once

    plain, flaky, nan = (trials[k] for k in ("sparse_attention", "tests.plugins:FlakyTask", "tests.plugins:NaNTask"))
    assert plain["status"] == flaky["status"] == "completed"
    assert flaky["retries"] == 1
    lam_plain = [r["lambda"] for r in evals[plain["trial_id"]]]
    lam_flaky = [r["lambda"] for r in evals[flaky["trial_id"]]]
    steps_flaky = [r["step"] for r in evals[flaky["trial_id"]]]
    assert steps_flaky == sorted(set(steps_flaky))  # no step repeated
    assert lam_flaky == lam_plain  # no jump: the retry continued from the checkpoint exactly

    assert nan["status"] == "failed" and "nan" in nan["error"].lower()
    ranked = rank(out["trials"])
    assert ranked[0]["trial_id"] != nan["trial_id"] and ranked[-1]["trial_id"] == nan["trial_id"]

    runs = [read_run(p) for p in find_runs(out["results_dir"])]
    nan_run = next(r for r in runs if nan["trial_id"] in r.name)
    assert nan_run.exit_code != 0
    flaky_run = next(r for r in runs if flaky["trial_id"] in r.name)
    steps = [int(h["_step"]) for h in flaky_run.history if "density" in h]
    assert steps == sorted(set(steps))  # the retry logged no step twice


def test_fractional_gpu_runs_two_trials_at_once(ray_local, tmp_path):
    """Ray has 2 CPUs and 1 (logical) GPU: trials asking 0.5 CPU + 0.5 GPU run exactly two at a time."""
    from orchestrator.sweep import run_sweep

    spec = smoke_spec(tmp_path / "store", name="gpu-half", resources={"cpu": 0.5, "gpu": 0.5},
                      wandb={"mode": "disabled"})
    out = run_sweep(spec, quiet=True)
    spans = [(t["started_at"], t["ended_at"]) for t in out["trials"]]
    assert len(spans) >= 3
    most = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert most == 2


@pytest.mark.parametrize("scheduler", [
    {"kind": "asha", "grace_evals": 2, "reduction_factor": 2},
    {"kind": "pbt", "interval_evals": 2, "mutations": {"controller.k_i": {"loguniform": [5, 60]}}},
])
def test_schedulers_run_to_the_end(ray_local, tmp_path, scheduler):
    """ASHA stops the worse trials early (status "stopped", ranked after the completed ones); PBT exploits other
    trials' checkpoints (restoring model, optimizer and controller) and every trial still completes."""
    from orchestrator.results import rank
    from orchestrator.sweep import run_sweep

    spec = smoke_spec(tmp_path / "store", name=scheduler["kind"], space={"target.delta": {"choice": [0.05, 0.2]}},
                      samples=4, scheduler=scheduler, checkpoint={"every": 2, "keep": 3},
                      trial={"train.steps": 100}, wandb={"mode": "disabled"})
    out = run_sweep(spec, quiet=True)
    statuses = [t["status"] for t in out["trials"]]
    assert len(statuses) == 4
    if scheduler["kind"] == "asha":
        assert "stopped" in statuses and "completed" in statuses
        assert [t["status"] for t in rank(out["trials"])][-statuses.count("stopped"):] == ["stopped"] * statuses.count("stopped")
    else:
        assert statuses == ["completed"] * 4
    for rows in by_trial(out["evals"]).values():
        steps = [r["step"] for r in rows]
        assert steps == sorted(set(steps))


def test_bad_task_and_oversized_resources_refused_before_any_trial(ray_local, tmp_path):
    from orchestrator.cli import UsageError
    from orchestrator.sweep import run_sweep
    from trainables.config import ConfigError

    with pytest.raises(ConfigError, match="task.name"):
        run_sweep(smoke_spec(tmp_path / "a", trial={"task.name": "nosuch.module:Task"}), quiet=True)
    with pytest.raises(UsageError, match="resources.gpu"):
        run_sweep(smoke_spec(tmp_path / "b", resources={"cpu": 1, "gpu": 2}), quiet=True)
    assert not (tmp_path / "a").exists() and not any((tmp_path / "b").rglob("tuner.pkl"))
