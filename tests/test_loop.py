"""The trial loop: exact resumption, the reset, warm-up freezing, divergence, and the pretraining cache."""

import math

import pytest
import torch

import trainables.pretrain as pretrain
from trainables import checkpoint
from trainables.config import resolve
from trainables.loop import TrialDiverged, run
from trainables.metrics import VOCAB

TINY = {"model.n_layer": 1, "model.d_model": 16, "model.n_head": 2, "model.context": 16,
        "pretrain.steps": 40, "pretrain.batch": 8, "pretrain.warmup": 5, "data.val_tokens": 256,
        "train.steps": 40, "train.batch": 8, "train.warmup": 5, "eval.every": 10, "train.device": "cpu",
        "controller.k_i": 30.0, "target.delta": 0.05}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def cfg_of(cache, **over):
    return resolve({**TINY, "pretrain.cache_dir": cache, **over})


def test_second_pretraining_call_trains_nothing(cache, monkeypatch):
    cfg = cfg_of(cache, **{"pretrain.seed": 7})
    steps = []
    real = pretrain.train_base

    def counting(cfg, progress=None):
        return real(cfg, lambda s, n, loss: steps.append(s))

    monkeypatch.setattr(pretrain, "train_base", counting)
    first = pretrain.get_base(cfg)
    assert steps[-1] == 40 and math.isfinite(first.val_ce) and first.val_ce < math.log(256)

    def forbidden(*a, **k):
        raise AssertionError("pretrained again")

    monkeypatch.setattr(pretrain, "train_base", forbidden)
    second = pretrain.get_base(cfg)
    assert second.val_ce == first.val_ce and second.key == first.key and second.path == first.path
    assert all(torch.equal(second.state[k], v) for k, v in first.state.items())
    with pytest.raises(AssertionError, match="pretrained again"):  # another config is another base model
        pretrain.get_base(cfg_of(cache, **{"pretrain.seed": 8}))


def strip(rows):
    """Rows without wall-clock values; NaN (train/ce at step 0) as None so that == compares it."""
    return [{k: None if r[k] != r[k] else r[k] for k in VOCAB if k != "tokens_per_s"} for r in rows]


def test_n_steps_equal_half_plus_checkpoint_plus_half(cache, tmp_path):
    cfg = cfg_of(cache, **{"reset.at": 30, "reset.parts": ["lambda", "controller", "optimizer", "lr_warmup",
                                                             "gates"]})
    full, final_full = [], {}

    def on_full(m, state_fn):
        full.append(m)
        if m["step"] == 40:
            final_full.update(state_fn())

    summary_full = run(cfg, on_eval=on_full)

    def on_first(m, state_fn):
        if m["step"] == 20:
            checkpoint.save(state_fn(), tmp_path / "ckpt.pt")
            raise KeyboardInterrupt  # the trial is killed right after its checkpoint

    with pytest.raises(KeyboardInterrupt):
        run(cfg, on_eval=on_first)
    second, final_resumed = [], {}

    def on_second(m, state_fn):
        second.append(m)
        if m["step"] == 40:
            final_resumed.update(state_fn())

    summary_resumed = run(cfg, resume=checkpoint.load(tmp_path / "ckpt.pt"), on_eval=on_second)
    assert [r["step"] for r in full] == [0, 10, 20, 30, 40]
    assert strip(full[3:]) == strip(second)  # metric for metric, bit for bit
    assert strip(final_full["rows"]) == strip(final_resumed["rows"])
    for k, v in final_full["task"]["model"].items():
        assert torch.equal(v, final_resumed["task"]["model"][k]), k
    assert summary_full == summary_resumed


def test_reset_returns_lambda_to_init_and_it_rises_again(cache):
    cfg = cfg_of(cache, **{"reset.at": 25, "train.steps": 60, "controller.lambda_init": 0.01})
    rows = []
    run(cfg, on_eval=lambda m, s: rows.append(m))
    lam = {r["step"]: r["lambda"] for r in rows}
    assert list(lam) == [0, 10, 20, 25, 30, 40, 50, 60]
    assert lam[0] == pytest.approx(0.01, rel=1e-12) and lam[20] > 0.011  # rose before the reset (val CE under target)
    assert lam[25] == pytest.approx(0.01, rel=1e-12)  # back at lambda_init right after the reset step
    assert lam[30] > 0.011 and lam[60] > lam[30]  # and rises again
    assert all(set(r) == {*VOCAB, "time/train_s"} for r in rows)


def test_controller_frozen_during_lr_warmup(cache):
    rows = []
    run(cfg_of(cache, **{"train.warmup": 25, "train.steps": 30}), on_eval=lambda m, s: rows.append(m))
    assert [r["lambda"] for r in rows[:3]] == pytest.approx([0.01] * 3, rel=1e-12)  # steps 0, 10, 20: warm-up
    assert rows[3]["lambda"] != pytest.approx(0.01, rel=1e-6)
    assert rows[0]["density"] > 0.5


def test_nan_val_ce_reported_then_trial_diverged(cache):
    cfg = cfg_of(cache, **{"task.name": "tests.plugins:NaNTask", "task.options": {"nan_at": 20}})
    rows = []
    with pytest.raises(TrialDiverged, match="val/ce is nan at step 20"):
        run(cfg, on_eval=lambda m, s: rows.append(m))
    assert [r["step"] for r in rows] == [0, 10, 20]
    assert math.isnan(rows[-1]["val/ce"]) and math.isfinite(rows[-1]["lambda"]) and rows[-1]["lambda"] >= 0
    assert rows[-1]["lambda"] == rows[-2]["lambda"]  # the NaN was not fed to the controller
