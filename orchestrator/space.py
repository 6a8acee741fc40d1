"""A validated ``SweepSpec`` -> the Ray Tune objects: param_space, search algorithm, scheduler.

Ray is imported inside the functions, so ``tightrope validate`` (which imports ``orchestrator.spec`` only)
never loads it.

Every trial reports ``objective`` (lower is better, see ``orchestrator.sweep``) once per evaluation, so Ray's
``training_iteration`` counts evaluations: ASHA's grace period and PBT's interval are given in evaluations.
"""

from __future__ import annotations

from typing import Any

from orchestrator.spec import AshaScheduler, Dim, PbtScheduler, SweepSpec

METRIC = "objective"
MODE = "min"
TIME_ATTR = "training_iteration"  # = evaluations, one tune.report per evaluation


def domain(dim: Dim) -> Any:
    """One Dim -> ``tune.grid_search`` / ``choice`` / ``uniform`` / ``loguniform`` / ``randint`` ([lo, hi))."""
    from ray import tune

    lo_hi = dim.args
    return {
        "grid": lambda: tune.grid_search(list(dim.args)),
        "choice": lambda: tune.choice(list(dim.args)),
        "uniform": lambda: tune.uniform(*lo_hi),
        "loguniform": lambda: tune.loguniform(*lo_hi),
        "randint": lambda: tune.randint(*lo_hi),
    }[dim.form]()


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """Ray's param_space: flat ``{dotted trial key: domain}``; a trial config is ``spec.trial_config(config)``."""
    return {key: domain(dim) for key, dim in spec.space.items()}


def search_alg(spec: SweepSpec) -> Any:
    """The search algorithm, with ``max_concurrent`` already applied (give Tune no max_concurrent_trials).

    - random / grid: None when neither a seed nor a concurrency limit is set, else Ray's
      BasicVariantGenerator(random_state=seed, max_concurrent=...) so random draws repeat from run to run;
    - optuna: OptunaSearch(metric="objective", mode="min", seed), in a ConcurrencyLimiter when max_concurrent > 0.
    """
    if spec.search.algorithm == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        alg = OptunaSearch(metric=METRIC, mode=MODE, seed=spec.search.seed)
        return ConcurrencyLimiter(alg, max_concurrent=spec.max_concurrent) if spec.max_concurrent else alg
    if spec.search.seed is None and not spec.max_concurrent:
        return None
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.search.seed, max_concurrent=spec.max_concurrent)


def scheduler(spec: SweepSpec) -> Any:
    """ASHA or PBT on ``objective`` (min) with time in evaluations; None for ``kind: none``.

    ASHA's max_t is the most reports any trial makes (its evaluations, + 2 for an evaluation at step 0 and the
    closing summary report): no trial is cut early by it, nor by Ray's default max_t=100. PBT perturbs ranges by x0.8 / x1.2 and clamps them back into their range.
    """
    sch = spec.scheduler
    if isinstance(sch, AshaScheduler):
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(time_attr=TIME_ATTR, metric=METRIC, mode=MODE, max_t=spec.eval_range()[1] + 2,
                             grace_period=sch.grace_evals, reduction_factor=sch.reduction_factor)
    if isinstance(sch, PbtScheduler):
        from ray.tune.schedulers import PopulationBasedTraining

        mutations = spec.mutations()
        return PopulationBasedTraining(
            time_attr=TIME_ATTR, metric=METRIC, mode=MODE, perturbation_interval=sch.interval_evals,
            hyperparam_mutations={k: mutation(d) for k, d in mutations.items()},
            quantile_fraction=sch.quantile_fraction, resample_probability=sch.resample_probability,
            custom_explore_fn=ClampToRanges(mutations),
        )
    return None


def mutation(dim: Dim) -> Any:
    """A PBT mutation: a list for choice (PBT shifts to a neighbour), a tune domain for ranges."""
    return list(dim.args) if dim.form in ("grid", "choice") else domain(dim)


class ClampToRanges:
    """PBT's explore multiplies a range value by 0.8 or 1.2, which can leave the range: clamp it back.

    x <- min(max(x, lo), hi), with hi - 1 for randint's half-open [lo, hi). Picklable (Tune saves the scheduler).
    """

    def __init__(self, mutations: dict[str, Dim]):
        self.bounds = {k: (d.args[0], d.args[1] - (d.form == "randint"))
                       for k, d in mutations.items() if d.form in ("uniform", "loguniform", "randint")}

    def __call__(self, config: dict) -> dict:
        for k, (lo, hi) in self.bounds.items():
            if k in config and config[k] is not None:
                config[k] = type(config[k])(min(max(config[k], lo), hi))
        return config
