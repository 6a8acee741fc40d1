"""``tightrope sweep SPEC``: validate, pretrain once, run the trials on Ray Tune, write the results.

    spec ──validate──▶ base model (cache) ──▶ Tuner(with_resources(with_parameters(trial_fn)), param_space,
         TuneConfig(search, scheduler, samples, concurrency), RunConfig(storage, failure retries, callbacks))
         ──▶ result.json per trial ──▶ evals.parquet, trials.parquet, figures, summary.md (+ W&B runs)

Nothing starts before the spec is valid. A sweep folder that already holds a sweep is never overwritten: the
user says ``--resume`` to continue it (finished trials are kept, unfinished ones continue from their last
checkpoint) or picks another name or storage.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.cli import UsageError
from orchestrator.storage import Storage
from trainables.config import TrialConfig


def run(args) -> int:
    from orchestrator.spec import SweepSpec, load_spec

    spec = load_spec(args.spec)
    if args.storage:  # re-validated: the storage checks apply to the new location too
        data = spec.model_dump(mode="json")
        data["storage"] = {**data["storage"], "path": args.storage}
        spec = SweepSpec.from_dict(data)
    out = run_sweep(spec, address=args.address or os.environ.get("RAY_ADDRESS"), resume=args.resume,
                    quiet=args.quiet)
    trials = out["trials"]
    failed = sum(t["status"] == "failed" for t in trials)
    print(f"results: {out['results_dir']}" + (f" (uploaded to {out['uploaded']})" if out.get("uploaded") else ""))
    unfinished = spec.n_trials() - sum(t["status"] in ("completed", "failed") for t in trials)
    if unfinished and spec.scheduler.kind == "none":  # no scheduler stops trials early: it was interrupted
        print(f"interrupted with {unfinished} trial(s) unfinished; continue with: "
              f"tightrope sweep {args.spec} --resume", file=sys.stderr)
        return 130
    return 0 if failed < len(trials) else 1


def storage_of(spec) -> Storage:
    return Storage(spec.storage.path, spec.storage.endpoint, spec.storage.shared)


def local_results_dir(spec, storage: Storage) -> Path:
    """Where Parquet, figures and W&B offline files are written on the driver."""
    if storage.remote:
        return Path(os.environ.get("TIGHTROPE_RESULTS", "results")).resolve() / spec.name
    return Path(storage.ray_storage()[0]) / spec.name


def _wandb_mode(spec) -> str:
    mode = spec.wandb.mode
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        print("W&B: no WANDB_API_KEY set, logging offline (upload later with `wandb sync`)")
        mode = "offline"
    return mode


def run_sweep(spec, *, address: str | None = None, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress table replaces Tune's console output
    mode = _wandb_mode(spec)
    os.environ["WANDB_MODE"] = mode  # before ray.init: the W&B integration reads it (RAY_NOTES)
    storage = storage_of(spec)
    path, fs = storage.ray_storage()
    exp_path = f"{path}/{spec.name}"

    import ray
    from ray import tune

    exists = tune.Tuner.can_restore(exp_path, storage_filesystem=fs)
    if resume and not exists:
        raise UsageError(f"nothing to resume: no sweep '{spec.name}' at {exp_path}")
    if not resume and exists:
        raise UsageError(f"a sweep '{spec.name}' already exists at {exp_path}: continue it with --resume, "
                         "or change `name` or `storage`")
    if resume:
        _check_same_spec(spec, storage)
    cfg = spec.trial_config()
    _preflight(cfg, local=not address)

    results_dir = local_results_dir(spec, storage)
    results_dir.mkdir(parents=True, exist_ok=True)
    started_ray = _ray_init(address)
    try:
        _check_multi_node(ray, storage)
        if not address:
            _check_resources_fit(ray, spec)
        if not resume:
            _write_spec(spec, storage)
        bases = {_base_key(cfg): _pretrain(cfg, spec, local=not address, quiet=quiet)}
        trainable = _trainable(spec, bases)
        callbacks = _callbacks(spec, mode, results_dir, quiet)
        t0 = time.time()
        if resume:
            from orchestrator.space import param_space

            tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True,
                                       param_space=param_space(spec), storage_filesystem=fs)
            tuner._local_tuner.get_run_config().callbacks = callbacks  # fresh ones: the pickled ones are stale
        else:
            tuner = _tuner(spec, trainable, path, fs, callbacks)
        grid = tuner.fit()
        elapsed = time.time() - t0
        evals, trials = collect(grid, spec, callbacks[0])
    finally:
        if started_ray:
            ray.shutdown()

    from orchestrator import report, results

    results.write_table(evals, results_dir / results.EVALS, columns=results.EVAL_COLUMNS)
    results.write_table(trials, results_dir / results.TRIALS)
    (results_dir / "sweep.json").write_text(json.dumps(
        {"name": spec.name, "n_trials": spec.n_trials(), "elapsed_s": elapsed, "wandb_mode": mode,
         "storage": storage.uri}, indent=2))
    report.build(results_dir)
    uploaded = storage.upload(results_dir, spec.name) if storage.remote else None
    return {"results_dir": results_dir, "evals": evals, "trials": trials, "uploaded": uploaded}


def _ray_init(address: str | None) -> bool:
    """Join ``address``, or start a Ray of our own (``"local"``: never a cluster some ``ray start`` left)."""
    import ray

    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UsageError(f"cannot reach the Ray cluster at {address or 'local'}: {e}") from None
    return True


SPEC_FILE = "tightrope-spec.json"  # the spec a sweep started with, kept beside Tune's state


def _spec_identity(spec) -> dict:
    data = spec.model_dump(mode="json")
    data.pop("storage", None)  # the same sweep may be reached through another path or endpoint
    return data


def _write_spec(spec, storage: Storage) -> None:
    fs, path = storage.fs_path(spec.name)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{SPEC_FILE}") as f:
        f.write(json.dumps(_spec_identity(spec), indent=2, sort_keys=True).encode())


def _check_same_spec(spec, storage: Storage) -> None:
    """``--resume`` continues the sweep that was started, not an edited one: refuse a changed spec."""
    from trainables.config import flatten

    fs, path = storage.fs_path(spec.name)
    try:
        with fs.open_input_stream(f"{path}/{SPEC_FILE}") as f:
            before = json.loads(f.read().decode())
    except (FileNotFoundError, OSError):
        return  # a sweep started before the spec was recorded
    now = json.loads(json.dumps(_spec_identity(spec)))
    a, b = flatten(before), flatten(now)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if changed:
        raise UsageError(f"the spec changed since sweep '{spec.name}' started ({', '.join(changed)}): --resume "
                         "continues the sweep as it was started; restore the spec, or give the sweep a new name")


def _preflight(cfg: TrialConfig, *, local: bool) -> None:
    """What would fail in every trial fails here, before Ray starts: an own task that cannot be imported, and
    (locally) a corpus that cannot be read."""
    from trainables.data import load_corpus
    from trainables.tasks import task_class

    task_class(cfg.task.name)
    if local:
        load_corpus(cfg.data)


def _check_resources_fit(ray, spec) -> None:
    have = ray.cluster_resources()
    for name, need in (("cpu", spec.resources.cpu), ("gpu", spec.resources.gpu)):
        total = have.get(name.upper(), 0.0)
        if need > total:
            raise UsageError(f"resources.{name}: a trial needs {need:g} {name.upper()} but this machine's Ray has "
                             f"{total:g}; lower it, or run on a cluster with --address")


def _check_multi_node(ray, storage: Storage) -> None:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not storage.multi_node_safe:
        raise UsageError(
            f"storage.path '{storage.uri}' is a local folder but the Ray cluster has {len(nodes)} nodes: trials "
            "on other nodes could not write their checkpoints there. Use s3:// or gs:// storage, or set "
            "storage.shared: true if the folder is mounted on every node (NFS, ReadWriteMany volume).")


def _base_key(cfg: TrialConfig) -> str:
    from orchestrator.trainable import base_key

    return base_key(cfg)


def _pretrain(cfg: TrialConfig, spec, *, local: bool, quiet: bool):
    """Pretrain (or read from the cache) the base model once, before any trial starts.

    Locally it runs in the driver with a progress bar; on a cluster it runs as a Ray task with a trial's
    resources, so a GPU worker (not the CPU-only head) does the work."""
    from trainables.pretrain import get_base

    if local:
        from orchestrator.progress import pretrain_with_progress

        return pretrain_with_progress(cfg, quiet=quiet)
    import ray

    task = ray.remote(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu)(get_base)
    return ray.get(task.remote(cfg))


def _trainable(spec, bases: dict):
    from ray import tune

    from orchestrator.trainable import trial_fn

    fn = tune.with_parameters(trial_fn, trial_tree=spec.trial, bases=bases, checkpoint_every=spec.checkpoint.every,
                              cpus=spec.resources.cpu)
    return tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _callbacks(spec, mode: str, results_dir: Path, quiet: bool) -> list:
    from orchestrator.progress import SweepProgress
    from orchestrator.wandb_log import WandbRunCallback

    cbs: list = [SweepProgress(spec.name, spec.n_trials(), live=False if quiet else None)]
    if mode != "disabled":
        cbs.append(WandbRunCallback(spec.wandb.project, spec.wandb.group or spec.name, entity=spec.wandb.entity,
                                    mode=mode, dir=results_dir, config_fn=_FullConfig(spec)))
    return cbs


class _FullConfig:
    """A trial's sampled ``{dotted key: value}`` -> its whole resolved config, flat (picklable for Tune)."""

    def __init__(self, spec):
        self.spec = spec

    def __call__(self, sampled: dict) -> dict:
        return self.spec.trial_config({k: v for k, v in sampled.items() if "." in k}).flat()


def _tuner(spec, trainable, path: str, fs, callbacks):
    from ray import tune

    from orchestrator.space import METRIC, MODE, param_space, scheduler, search_alg

    sched, search = scheduler(spec), search_alg(spec)
    # Tune refuses metric/mode twice: a scheduler or model-based searcher built with them already carries them
    owned = sched is not None or getattr(search, "metric", None) is not None
    return tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            **({} if owned else {"metric": METRIC, "mode": MODE}), search_alg=search, scheduler=sched,
            num_samples=spec.samples, max_concurrent_trials=spec.max_concurrent or None,
            reuse_actors=True),  # keep trial processes (torch imported, corpus loaded) for the next trial
        run_config=tune.RunConfig(
            name=spec.name, storage_path=path, storage_filesystem=fs, verbose=0, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=spec.failure.retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.checkpoint.keep)),
    )


def collect(grid, spec, progress) -> tuple[list[dict], list[dict]]:
    """Per-evaluation rows and per-trial rows from the trials' ``result.json`` files in storage.

    A retried trial re-reports the evaluations after its last checkpoint: rows are keyed by step, the last
    report wins, so no evaluation appears twice."""
    from orchestrator.results import eval_row, trial_row

    evals, trials = [], []
    for result in grid:
        history = _history(result)
        final = result.metrics or (history[-1] if history else {})
        trial_id = final.get("trial_id") or Path(result.path).name
        by_step: dict[int, dict] = {}
        for r in history:
            if "step" in r:
                by_step[int(r["step"])] = r
        evals.extend(eval_row(trial_id, by_step[step]) for step in sorted(by_step))
        status, error = _status(result, final, spec)
        if status != "completed" and "final/density" not in final and by_step:  # summarise what it reached
            from trainables.metrics import summarize

            final = {**final, **summarize([by_step[k] for k in sorted(by_step)])}
        overrides = {k: v for k, v in (result.config or {}).items() if "." in k}
        flat = spec.trial_config(overrides).flat()
        start, end = progress.slots.get(trial_id, (math.nan, math.nan))
        if not math.isfinite(end):
            start, end = final.get("time/started_at"), final.get("timestamp")
        trials.append(trial_row(
            trial_id=trial_id, config=flat, summary=final, status=status, error=error, started_at=start,
            ended_at=end, wall_s=(end - start) if start and end else None, train_s=final.get("time/train_s"),
            retries=progress.retries.get(trial_id, 0), node_id=final.get("node_id")))
    return evals, trials


def _status(result, final: dict, spec) -> tuple[str, str]:
    if result.error is not None:
        return "failed", str(result.error).strip().splitlines()[-1][:500]
    if final.get("status") == "failed":
        return "failed", str(final.get("error", ""))
    if "final/density" in final:
        return "completed", ""
    if spec.scheduler.kind == "none":
        return "stopped", "interrupted before the end: continue with --resume"
    return "stopped", f"stopped early by the {spec.scheduler.kind} scheduler"


def _history(result) -> list[dict]:
    import pyarrow.fs as pafs

    fs = getattr(result, "filesystem", None) or pafs.LocalFileSystem()
    try:
        with fs.open_input_stream(f"{result.path}/result.json") as f:
            text = f.read().decode()
    except (FileNotFoundError, OSError):
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
