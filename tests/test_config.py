"""The trial config: dotted overrides, every error with its path, and errors that survive pickling."""

import pickle

import pytest

from trainables.config import ConfigError, resolve


def test_overrides_set_nested_fields_and_absolute_target_replaces_delta():
    cfg = resolve(["train.steps=300", "controller.k_i=0.5", "reset.at=150", "target.value=1.9"])
    assert (cfg.train.steps, cfg.controller.k_i, cfg.reset.at) == (300, 0.5, 150)
    assert cfg.target.value == 1.9 and cfg.target.delta is None
    assert cfg.target.resolve(1.7) == 1.9
    assert resolve([]).target.resolve(1.7) == pytest.approx(1.75)


def test_every_error_named_at_once():
    with pytest.raises(ConfigError) as e:
        resolve(["train.stepz=3", "controller.kind=x", "controller.k_i=-1", "noequals"])
    paths = [p for p, _ in e.value.errors]
    assert set(paths) == {"train.stepz", "controller.kind", "controller.k_i", "noequals"}


def test_config_error_survives_pickling():
    """Ray ships a trial's exception to the driver by pickling it: the field paths must arrive intact."""
    err = pickle.loads(pickle.dumps(ConfigError([("task.name", "cannot import nosuch.mod")])))
    assert err.errors == [("task.name", "cannot import nosuch.mod")]
    assert "task.name" in str(err)


def test_evaluation_interval_longer_than_the_run_is_refused():
    with pytest.raises(ConfigError) as e:
        resolve(["train.steps=100", "eval.every=500"])
    assert [p for p, _ in e.value.errors] == ["eval.every"]
    assert resolve(["train.steps=100", "eval.every=100"]).eval.every == 100
