"""The sweep spec: every sweep file validates, counts are right, and each kind of mistake is refused with its
field path (all of them at once). No Ray here; a subprocess proves `tightrope validate` never imports it."""

import copy
import glob
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.spec import SpecError, SweepSpec, load_spec
from trainables.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted(glob.glob(str(ROOT / "sweeps" / "*.yaml")))

GOOD = {
    "name": "t",
    "trial": {"train.steps": 600, "eval.every": 20},
    "space": {
        "target.delta": {"grid": [0.03, 0.08]},
        "controller.k_i": {"loguniform": [5, 50]},
        "reset.at": {"choice": [None, 300]},
    },
}


def errors(data) -> dict[str, list[str]]:
    """{field path: [messages]} of a spec that must be refused."""
    with pytest.raises(SpecError) as info:
        SweepSpec.from_dict(data)
    out: dict[str, list[str]] = {}
    for path, msg in info.value.errors:
        out.setdefault(path, []).append(msg)
    return out


def spec_with(**changes):
    data = copy.deepcopy(GOOD)
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            data.setdefault(section, {})[sub.replace("_DOT_", ".")] = value
        else:
            data[section] = value
    return data


# ------------------------------------------------------------------------------------------ sweep files ----


def test_sweep_folder_is_not_empty():
    assert {Path(p).name for p in SWEEPS} >= {"quickstart.yaml", "smoke.yaml", "reference.yaml"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: Path(p).name)
def test_every_sweep_file_validates(path):
    spec = load_spec(path)
    assert spec.name == Path(path).stem
    assert spec.n_trials() >= 1
    spec.trial_config()  # the trial block resolves on its own


def test_sweep_file_counts_and_contents():
    quick, smoke, ref = (load_spec(ROOT / "sweeps" / f) for f in ("quickstart.yaml", "smoke.yaml", "reference.yaml"))
    assert quick.n_trials() == 4
    assert {"target.delta", "controller.k_i", "reset.at"} <= set(quick.space)  # target, gains, reset
    assert quick.resources.cpu == 1 and quick.resources.gpu == 0
    q = quick.trial_config()
    assert (q.model.n_layer, q.model.d_model, q.model.context) == (2, 64, 64)
    assert q.train.threads == 1

    assert smoke.n_trials() == 4
    assert {"target.delta", "reset.at"} <= set(smoke.space)
    s = smoke.trial_config()
    assert s.model.d_model <= 32 and s.pretrain.steps <= 100 and s.train.steps <= 100
    assert smoke.checkpoint.every == 2 and smoke.wandb.mode == "offline"

    assert ref.n_trials() == 8
    r = ref.trial_config()
    assert (r.train.steps, r.reset.at) == (400_000, 100_000)
    assert ref.resources.gpu == 1 and ref.storage.scheme == "s3" and ref.wandb.mode == "online"
    assert ref.scheduler.kind in ("asha", "pbt")
    assert 0.0 in ref.space["target.delta"].grid  # keep the pretraining loss


def test_n_trials_is_samples_times_grid_product():
    data = spec_with(samples=3, space__train_DOT_seed={"grid": [0, 1, 2]})
    assert SweepSpec.from_dict(data).n_trials() == 3 * 2 * 3  # target.delta x2, train.seed x3; others random


# --------------------------------------------------------------------------------------- the good path ----


def test_trial_block_dotted_and_nested_merge_and_overrides_apply():
    data = spec_with(trial={"train.steps": 700, "train": {"lr": 1e-3}, "model": {"d_model": 32}})
    spec = SweepSpec.from_dict(data)
    assert spec.trial == {"train": {"steps": 700, "lr": 1e-3}, "model": {"d_model": 32}}
    cfg = spec.trial_config({"target.delta": 0.08, "reset.at": 300, "controller.k_i": 12.5})
    assert (cfg.train.steps, cfg.train.lr, cfg.model.d_model) == (700, 1e-3, 32)
    assert (cfg.target.delta, cfg.reset.at, cfg.controller.k_i) == (0.08, 300, 12.5)
    with pytest.raises(ConfigError):
        spec.trial_config({"reset.at": 900})  # beyond the run


def test_defaults_shorthands_and_sweep_dir(tmp_path):
    spec = SweepSpec.from_dict({"name": "abc", "storage": str(tmp_path), "scheduler": "asha"})
    assert spec.sweep_dir() == os.path.join(str(tmp_path), "abc")
    assert spec.scheduler.kind == "asha" and spec.search.algorithm == "random"
    assert spec.wandb.mode == "offline" and spec.wandb_group() == "abc"
    assert (spec.checkpoint.every, spec.checkpoint.keep, spec.failure.retries) == (5, 2, 2)
    uri = SweepSpec.from_dict({"name": "abc", "storage": {"path": "s3://b/p/", "endpoint": "http://127.0.0.1:5000"}})
    assert uri.sweep_dir() == "s3://b/p/abc"


def test_space_accepts_nested_sections():
    spec = SweepSpec.from_dict({"name": "n", "space": {"controller": {"k_i": {"grid": [1, 2]}}}})
    assert list(spec.space) == ["controller.k_i"] and spec.n_trials() == 2


def test_eval_range_covers_space_values():
    data = spec_with(trial={"eval.every": 20}, space__train_DOT_steps={"grid": [400, 1000]})
    assert SweepSpec.from_dict(data).eval_range() == (20, 50)


def test_asha_with_grid_is_allowed():
    spec = SweepSpec.from_dict(spec_with(scheduler={"kind": "asha", "grace_evals": 5}))
    assert spec.scheduler.kind == "asha" and spec.n_trials() == 2


def test_pbt_good_spec():
    data = spec_with(
        space={"controller.k_i": {"choice": [10, 30]}},
        samples=4,
        scheduler={"kind": "pbt", "interval_evals": 10, "mutations": {"controller.k_i": {"uniform": [5, 60]}}},
        checkpoint={"every": 5, "keep": 3},
    )
    spec = SweepSpec.from_dict(data)
    assert spec.mutations()["controller.k_i"].uniform == (5, 60) and spec.n_trials() == 4


# ------------------------------------------------------------------------------ one test per mistake ----


def test_unknown_top_level_key():
    assert "colour" in errors(spec_with(colour="red"))


def test_unknown_trial_key_dotted_and_nested():
    errs = errors(spec_with(trial={"train.stepz": 3, "controller": {"k_x": 1}}))
    assert {"trial.train.stepz", "trial.controller.k_x"} <= set(errs)


def test_unknown_space_key_and_section_as_key():
    errs = errors(spec_with(space__controller_DOT_nope={"grid": [1]}, space__controller={"grid": [1]}))
    assert "unknown key" in errs["space.controller.nope"][0]
    assert "space.controller" in errs


def test_unknown_section_key():
    assert "unknown key" in errors(spec_with(resources={"cpu": 1, "gpus": 1}))["resources.gpus"][0]


def test_wrong_types():
    errs = errors(spec_with(samples="two", trial={"train.steps": "many"}, max_concurrent=1.5))
    assert {"samples", "trial.train.steps", "max_concurrent"} <= set(errs)


def test_wrong_type_inside_a_grid_names_the_value():
    errs = errors(spec_with(space__train_DOT_steps={"grid": [100, "abc"]}))
    assert any(m.startswith("abc:") for m in errs["space.train.steps.grid"])


def test_empty_grid_and_choice():
    errs = errors(spec_with(space__target_DOT_delta={"grid": []}, space__reset_DOT_at={"choice": []}))
    assert "empty" in errs["space.target.delta.grid"][0]
    assert "empty" in errs["space.reset.at.choice"][0]


def test_loguniform_low_not_positive():
    errs = errors(spec_with(space__controller_DOT_k_i={"loguniform": [0, 50]}))
    assert "> 0" in errs["space.controller.k_i.loguniform"][0]


@pytest.mark.parametrize("key,form,bounds", [("controller.k_p", "uniform", [2, 1]),
                                              ("controller.k_i", "loguniform", [5, 5]),
                                              ("train.seed", "randint", [3, 3])])
def test_low_not_below_high(key, form, bounds):
    errs = errors(spec_with(space={key: {form: bounds}}))
    assert "low < high" in errs[f"space.{key}.{form}"][0]


def test_two_forms_or_unknown_form():
    errs = errors(spec_with(space__controller_DOT_k_p={"uniform": [0, 1], "choice": [1]},
                            space__controller_DOT_ema={"logunifrom": [0.1, 0.9]}))
    assert "exactly one" in errs["space.controller.k_p"][0]
    assert "unknown form" in errs["space.controller.ema.logunifrom"][0]


def test_range_over_an_integer_setting():
    errs = errors(spec_with(space__train_DOT_batch={"uniform": [8, 16]}))
    assert "randint" in errs["space.train.batch.uniform"][0]


def test_a_range_end_outside_the_field_limits():
    errs = errors(spec_with(space__controller_DOT_ema={"uniform": [0.5, 1.5]}))  # ema < 1
    assert errs["space.controller.ema.uniform"][0].startswith("1.5:")


def test_reset_beyond_the_run_in_trial():
    errs = errors(spec_with(trial={"train.steps": 200, "reset.at": 300}, space={}))
    assert errs["trial.reset.at"] == ["step 300 is beyond the run (train.steps = 200)"]


def test_reset_beyond_the_run_from_the_space():
    errs = errors(spec_with(space__reset_DOT_at={"choice": [None, 300, 900]}))  # train.steps 600 in trial
    assert errs["space.reset.at.choice"] == ["900: step 900 is beyond the run (train.steps = 600)"]


def test_reset_beyond_the_run_when_both_come_from_the_space():
    data = spec_with(trial={"eval.every": 20}, space__train_DOT_steps={"grid": [200, 1000]})
    errs = errors(data)  # reset.at choice [null, 300] vs train.steps 200
    assert any("300" in m and "beyond" in m for m in errs["space.reset.at.choice"])


def test_trial_reset_beyond_a_train_steps_from_the_space():
    data = spec_with(trial={"reset.at": 300}, space={"train.steps": {"grid": [200, 1000]}})
    assert "reset.at" in errors(data)["space.train.steps.grid"][0]


def test_no_false_alarm_when_the_space_sets_both_sides():
    # trial default train.steps (1500) would make reset.at 3000 invalid, but every trial gets 5000 or 6000
    data = {"name": "x", "space": {"reset.at": {"grid": [3000]}, "train.steps": {"grid": [5000, 6000]}}}
    assert SweepSpec.from_dict(data).n_trials() == 2


def test_key_in_both_trial_and_space():
    assert "space.reset.at" in errors(spec_with(trial={"reset.at": 100, "train.steps": 600}))


def test_unknown_scheduler():
    errs = errors(spec_with(scheduler={"kind": "hyperband"}))
    assert "hyperband" in errs["scheduler.kind"][0]
    assert "scheduler.grace_evals" in errors(spec_with(scheduler={"kind": "asha", "grace_evals": 0}))


def test_pbt_without_checkpoints():
    data = spec_with(space={"controller.k_i": {"choice": [10, 30]}}, samples=4, checkpoint={"every": None},
                     scheduler={"kind": "pbt", "mutations": {"controller.k_i": {"choice": [10, 30]}}})
    assert "checkpoint.every" in errors(data)


def test_pbt_with_grid_and_bad_mutations():
    data = spec_with(samples=2, checkpoint={"every": 5, "keep": 3},
                     scheduler={"kind": "pbt", "interval_evals": 10,
                                "mutations": {"model.d_model": {"choice": [32, 64]}, "controller.k_x": {"choice": [1]},
                                              "controller.k_p": {"grid": [0, 1]}}})
    errs = errors(data)
    assert "grid" in errs["space.target.delta.grid"][0]
    assert {"scheduler.mutations.model.d_model", "scheduler.mutations.controller.k_x",
            "scheduler.mutations.controller.k_p.grid"} <= set(errs)


def test_pbt_needs_mutations_population_and_aligned_interval():
    data = {"name": "p", "scheduler": {"kind": "pbt", "interval_evals": 3}, "checkpoint": {"every": 2, "keep": 2}}
    errs = errors(data)
    assert {"scheduler.mutations", "samples", "scheduler.interval_evals", "checkpoint.keep"} <= set(errs)


def test_pbt_mutation_values_are_checked_against_the_trial():
    data = spec_with(space={}, samples=2, checkpoint={"every": 5, "keep": 3},
                     scheduler={"kind": "pbt", "interval_evals": 10, "mutations": {"controller.ema": {"uniform": [0.5, 2]}}})
    assert errors(data)["scheduler.mutations.controller.ema.uniform"][0].startswith("2.0:")


def test_asha_grace_longer_than_the_run():
    errs = errors(spec_with(scheduler={"kind": "asha", "grace_evals": 31}))  # 600 / 20 = 30 evaluations
    assert "30" in errs["scheduler.grace_evals"][0]


def test_optuna_with_a_grid():
    errs = errors(spec_with(search={"algorithm": "optuna"}))
    assert "optuna" in errs["space.target.delta.grid"][0]


def test_unknown_search_algorithm():
    assert "search.algorithm" in errors(spec_with(search={"algorithm": "bayes"}))


def test_negative_resources_and_fractional_gpus_above_one():
    errs = errors(spec_with(resources={"cpu": -1, "gpu": -0.5}))
    assert {"resources.cpu", "resources.gpu"} <= set(errs)
    assert "whole" in errors(spec_with(resources={"cpu": 1, "gpu": 1.5}))["resources.gpu"][0]
    assert "resources" in errors(spec_with(resources={"cpu": 0, "gpu": 0}))
    SweepSpec.from_dict(spec_with(resources={"cpu": 1, "gpu": 0.5}))  # fractional GPUs below 1 are fine


def test_cuda_trial_without_gpu():
    assert "resources.gpu" in errors(spec_with(trial={"train.steps": 600, "train.device": "cuda"}))


def test_unknown_wandb_mode():
    assert "offline" in errors(spec_with(wandb={"mode": "sometimes"}))["wandb.mode"][0]


def test_bad_name_and_missing_name():
    assert "name" in errors(spec_with(name="Has_Caps"))
    data = spec_with()
    del data["name"]
    assert "missing" in errors(data)["name"][0]


def test_bad_storage():
    errs = errors(spec_with(storage={"path": "ftp://x/y", "endpoint": "localhost"}))
    assert {"storage.path", "storage.endpoint"} <= set(errs)


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ntrial:\n  train.steps: [1, 2\n")
    with pytest.raises(SpecError) as info:
        load_spec(p)
    (where, msg), = info.value.errors
    assert where.startswith(f"{p}:") and where.split(":")[1] == "4" and "YAML" in msg


def test_duplicate_yaml_key_names_the_line(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("name: x\nsamples: 1\nsamples: 2\n")
    with pytest.raises(SpecError) as info:
        load_spec(p)
    assert info.value.errors[0][0] == f"{p}:3:1" and "twice" in info.value.errors[0][1]


def test_missing_file(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert info.value.errors == [(str(tmp_path / "nope.yaml"), "no such file")]


def test_every_mistake_is_reported_at_once():
    data = {
        "name": "many",
        "colour": "red",
        "trial": {"train.steps": 500, "train.stepz": 1},
        "space": {
            "controller.k_i": {"loguniform": [0, 50]},
            "target.delta": {"grid": []},
            "reset.at": {"choice": [None, 900]},
            "controller.nope": {"grid": [1]},
        },
        "samples": "two",
        "scheduler": {"kind": "hyperband"},
        "resources": {"cpu": -1},
        "wandb": {"mode": "sometimes"},
    }
    errs = errors(data)
    expected = {"colour", "trial.train.stepz", "space.controller.k_i.loguniform", "space.target.delta.grid",
                "space.reset.at.choice", "space.controller.nope", "samples", "scheduler.kind", "resources.cpu",
                "wandb.mode"}
    assert expected <= set(errs), expected - set(errs)
    assert errs["space.reset.at.choice"] == ["900: step 900 is beyond the run (train.steps = 500)"]


# ------------------------------------------------------------------------------------------------ CLI ----


def _cli(*args, cwd=ROOT):
    code = ("import sys; from orchestrator.cli import main; rc = main(sys.argv[1:]); "
            "print('RAY_IMPORTED' if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 'NO_RAY'); "
            "sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_validate_cli_ok_without_importing_ray():
    r = _cli("validate", str(ROOT / "sweeps" / "quickstart.yaml"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: 4 trials")
    assert "target.delta" in r.stdout and "NO_RAY" in r.stdout


def test_validate_cli_lists_every_error_and_exits_2(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(textwrap.dedent("""\
        name: bad
        space:
          controller.k_i: {loguniform: [0, 50]}
        resources: {cpu: -1}
        scheduler: {kind: hyperband}
        """))
    r = _cli("validate", str(p))
    assert r.returncode == 2
    for path in ("space.controller.k_i.loguniform", "resources.cpu", "scheduler.kind"):
        assert f"  {path}: " in r.stderr
    assert "NO_RAY" in r.stdout


def test_validate_refuses_an_own_task_that_cannot_be_imported(tmp_path, capsys):
    from orchestrator.cli import main

    spec = tmp_path / "badtask.yaml"
    spec.write_text("name: badtask\ntrial:\n  task.name: nosuch.module:Task\n")
    assert main(["validate", str(spec)]) == 2
    assert "trial.task.name" in capsys.readouterr().err
