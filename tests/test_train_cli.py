"""``tightrope train``: bad overrides refused before anything is trained; a tiny run writes its three files."""

import json

import pyarrow.parquet as pq
import pytest

import trainables.pretrain as pretrain
from orchestrator import train_cmd
from orchestrator.cli import main
from trainables.metrics import VOCAB

TINY = ["model.n_layer=1", "model.d_model=16", "model.n_head=2", "model.context=16", "pretrain.steps=30",
        "pretrain.batch=8", "data.val_tokens=256", "train.steps=30", "train.batch=8", "train.warmup=5",
        "eval.every=10", "train.device=cpu"]


@pytest.fixture
def no_training(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("trained although the input was bad")

    monkeypatch.setattr(pretrain, "get_base", forbidden)
    monkeypatch.setattr(pretrain, "train_base", forbidden)
    monkeypatch.setattr(train_cmd, "get_base", forbidden)
    monkeypatch.setattr(train_cmd, "run_trial", forbidden)


@pytest.mark.parametrize("override,key", [
    ("train.stepz=10", "train.stepz"),                  # unknown key
    ("train.steps=many", "train.steps"),                # wrong type
    ("controller.k_i=-1", "controller.k_i"),            # negative gain
    ("reset.at=5000", "reset.at"),                      # reset beyond the run (train.steps = 1500)
    ("target.value=0", "target.value"),                 # target <= 0
    ("task.name=no.such.module:Task", "task.name"),     # own task that cannot be imported
    ("data.path=/nonexistent/corpus.txt", "data.path"),  # missing corpus
])
def test_bad_override_exit_2_names_the_key_and_trains_nothing(override, key, tmp_path, capsys, no_training):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--quiet", override]) == 2
    err = capsys.readouterr().err
    assert f"{key}:" in err
    assert not out.exists()


def test_tiny_train_writes_evals_trial_and_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("TIGHTROPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--quiet", *TINY, "reset.at=15"]) == 0
    table = pq.read_table(out / "evals.parquet")
    assert table.column_names == [*VOCAB, "time/train_s"]
    assert table.column("step").to_pylist() == [0, 10, 15, 20, 30]
    info = json.loads((out / "trial.json").read_text())
    assert info["status"] == "ok" and info["flat"]["reset.at"] == 15 and info["config"]["train"]["steps"] == 30
    assert info["final/density"] == table.column("density").to_pylist()[-1]
    assert info["target"] == pytest.approx(info["base"]["val_ce"] + 0.05)
    assert (out / "curves.png").stat().st_size > 10_000


def test_diverged_trial_still_writes_its_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("TIGHTROPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--quiet", *TINY, "task.name=tests.plugins:NaNTask",
                 'task.options={"nan_at": 20}'])
    assert code == 1
    assert pq.read_table(out / "evals.parquet").column("step").to_pylist() == [0, 10, 20]
    assert json.loads((out / "trial.json").read_text())["status"] == "diverged"
