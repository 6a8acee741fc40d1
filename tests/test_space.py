"""Spec -> Ray Tune objects. Imports ray.tune but starts no cluster: domains, variant generation, searchers and
schedulers are plain objects."""

import glob
import pickle
from pathlib import Path

import pytest

pytest.importorskip("ray.tune")

from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining  # noqa: E402
from ray.tune.search import ConcurrencyLimiter  # noqa: E402
from ray.tune.search.basic_variant import BasicVariantGenerator  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from orchestrator.space import (  # noqa: E402
    METRIC,
    MODE,
    ClampToRanges,
    param_space,
    scheduler,
    search_alg,
)
from orchestrator.spec import SweepSpec, load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _trainable(config):  # never run: BasicVariantGenerator only needs a callable to build trials
    pass


def variants(spec: SweepSpec, seed=0) -> list[dict]:
    """The trial configs Ray's BasicVariantGenerator makes from the spec, without a cluster."""
    gen = BasicVariantGenerator(random_state=seed)
    gen.add_configurations({"x": {"run": _trainable, "config": param_space(spec), "num_samples": spec.samples}})
    out = []
    while (trial := gen.next_trial()) is not None:
        out.append(trial.config)
    return out


def test_param_space_domains():
    spec = SweepSpec.from_dict({"name": "d", "space": {
        "target.delta": {"grid": [0.03, 0.08]},
        "reset.at": {"choice": [None, 300]},
        "controller.k_p": {"uniform": [0, 2]},
        "controller.k_i": {"loguniform": [5, 50]},
        "train.seed": {"randint": [0, 100]},
    }})
    ps = param_space(spec)
    assert ps["target.delta"] == {"grid_search": [0.03, 0.08]}
    assert isinstance(ps["reset.at"], tune.search.sample.Categorical) and ps["reset.at"].categories == [None, 300]
    assert (ps["controller.k_p"].lower, ps["controller.k_p"].upper) == (0, 2)
    assert isinstance(ps["controller.k_i"].get_sampler(), tune.search.sample.LogUniform)
    assert isinstance(ps["train.seed"], tune.search.sample.Integer)
    assert (ps["train.seed"].lower, ps["train.seed"].upper) == (0, 100)


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "sweeps" / "*.yaml"))), ids=lambda p: Path(p).name)
def test_every_generated_trial_resolves_and_count_matches(path):
    spec = load_spec(path)
    configs = variants(spec)
    assert len(configs) == spec.n_trials()
    for config in configs:
        assert set(config) == set(spec.space)
        cfg = spec.trial_config(config)
        for key, value in config.items():
            assert cfg.flat()[key] == value


def test_quickstart_trials_vary_target_gain_and_reset():
    configs = variants(load_spec(ROOT / "sweeps" / "quickstart.yaml"))
    for key in ("target.delta", "controller.k_i", "reset.at"):
        assert len({repr(c[key]) for c in configs}) >= 2, key


def test_seeded_random_search_repeats_and_differs_by_seed():
    spec = SweepSpec.from_dict({"name": "r", "samples": 4, "space": {"controller.k_i": {"loguniform": [5, 50]}}})
    a, b, c = variants(spec, 0), variants(spec, 0), variants(spec, 1)
    assert a == b and a != c
    assert all(5 <= x["controller.k_i"] <= 50 for x in a)


def test_search_alg_random():
    assert search_alg(SweepSpec.from_dict({"name": "a", "search": {"seed": None}})) is None
    alg = search_alg(SweepSpec.from_dict({"name": "a", "search": {"seed": 3}, "max_concurrent": 2}))
    assert isinstance(alg, BasicVariantGenerator) and alg.max_concurrent == 2


@pytest.mark.filterwarnings("ignore:Choices for a categorical")  # optuna: lists are fine in memory
def test_search_alg_optuna_with_concurrency_limit_suggests_valid_configs():
    spec = SweepSpec.from_dict({"name": "o", "samples": 4, "max_concurrent": 2, "search": {"algorithm": "optuna"},
                                "space": {"controller.k_i": {"loguniform": [5, 50]},
                                          "reset.parts": {"choice": [["lambda"], ["lambda", "optimizer"]]}}})
    alg = search_alg(spec)
    assert isinstance(alg, ConcurrencyLimiter) and alg.max_concurrent == 2
    assert isinstance(alg.searcher, OptunaSearch)
    assert alg.searcher.metric == METRIC and alg.searcher.mode == MODE
    assert alg.set_search_properties(None, None, param_space(spec))
    first, second, third = (alg.suggest(f"t{i}") for i in range(3))
    assert third is None  # the limiter holds the third until one finishes
    for config in (first, second):
        assert 5 <= config["controller.k_i"] <= 50
        spec.trial_config(config)
    unlimited = search_alg(spec.model_copy(update={"max_concurrent": 0}))
    assert isinstance(unlimited, OptunaSearch)


def test_no_scheduler():
    assert scheduler(SweepSpec.from_dict({"name": "n"})) is None


def test_asha_counts_evaluations_and_covers_the_longest_trial():
    spec = SweepSpec.from_dict({"name": "a", "trial": {"eval.every": 20},
                                "space": {"train.steps": {"grid": [1000, 3000]}},
                                "scheduler": {"kind": "asha", "grace_evals": 4, "reduction_factor": 3}})
    s = scheduler(spec)
    assert isinstance(s, ASHAScheduler)
    assert s._max_t == 3000 // 20 + 2  # not Ray's default 100, which would cut these trials at 2000 steps
    assert s._brackets[0].rf == 3 and s._brackets[0]._rungs[-1][0] == 4  # the first rung at the grace period
    assert (s.metric, s._mode, s._time_attr) == (METRIC, MODE, "training_iteration")


def test_pbt_mutations_and_clamping():
    spec = SweepSpec.from_dict({
        "name": "p", "samples": 4, "checkpoint": {"every": 5, "keep": 3},
        "space": {"controller.k_i": {"choice": [10, 30]}},
        "scheduler": {"kind": "pbt", "interval_evals": 10, "mutations": {
            "controller.k_i": {"uniform": [5, 60]}, "reset.at": {"choice": [None, 300]},
            "train.seed": {"randint": [0, 10]}}},
    })
    s = scheduler(spec)
    assert isinstance(s, PopulationBasedTraining)
    assert s._perturbation_interval == 10 and s._metric == METRIC and s._time_attr == "training_iteration"
    assert s._hyperparam_mutations["reset.at"] == [None, 300]
    assert s._hyperparam_mutations["controller.k_i"].lower == 5
    clamp = pickle.loads(pickle.dumps(s._custom_explore_fn))  # Tune pickles the scheduler with the experiment
    out = clamp({"controller.k_i": 72.0, "train.seed": 12, "reset.at": 300})
    assert out == {"controller.k_i": 60.0, "train.seed": 9, "reset.at": 300}
    assert ClampToRanges(spec.mutations())({"controller.k_i": 1.2})["controller.k_i"] == 5.0
