"""The sweep spec: one YAML file -> a validated ``SweepSpec``, every problem reported at once.

    name: quickstart
    trial: {train.steps: 600, pretrain.steps: 1500}          # the same dotted keys as ``tightrope train``
    space:                                                    # one form per key
      target.delta: {grid: [0.03, 0.08]}                      # every value (multiplies the trial count)
      controller.k_i: {loguniform: [5, 50]}                   # exp(U(log lo, log hi)), 0 < lo < hi
      controller.k_p: {uniform: [0, 2]}                       # U(lo, hi)
      train.seed: {randint: [0, 100]}                         # integers in [lo, hi)
      reset.at: {choice: [null, 300]}                         # one value per sample, null = no reset
    samples: 1                                                # trials = samples * prod(len(grid))
    search: {algorithm: random, seed: 0}                      # random (grid + random) | optuna
    scheduler: {kind: none}                                   # none | asha | pbt
    ...

Validation never imports Ray. A spec is checked in three layers, and problems from all three are collected:

1. the shape of each section (pydantic, ``extra="forbid"``: unknown keys and wrong types);
2. the trial block on its own (``trainables.config.resolve``), reported under ``trial.<key>``;
3. every *candidate trial*: each combination of the candidate values of the space (every grid/choice value,
   both ends of every range, PBT mutations included) laid over the trial block must resolve, so a cross-field
   rule such as ``reset.at < train.steps`` is checked whichever side of it the space sets. Failures are
   reported under ``space.<key>.<form>`` with the offending value. Up to ``MAX_COMBOS`` combinations are
   checked exhaustively; beyond that a fixed sample that contains every candidate at least once.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.config import ConfigError, TrialConfig, resolve, set_dotted

FORMS = ("grid", "choice", "uniform", "loguniform", "randint")
MAX_COMBOS = 4096
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
URI_SCHEMES = ("s3", "gs", "gcs")  # what orchestrator.storage reaches through pyarrow
BASE_PREFIXES = ("model.", "pretrain.", "data.")  # settings baked into the base model / its checkpoint


class SpecError(ConfigError):
    """Invalid sweep spec. ``errors`` is a list of ``(field path, message)`` pairs, all of them."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------- space ----


class Dim(_Strict):
    """One search dimension over a trial key; exactly one form is given.

    grid [v...]          every value, each in its own trial(s): multiplies the trial count (Ray grid_search)
    choice [v...]        one value drawn uniformly per sample
    uniform [lo, hi]     lo + (hi - lo) * U,                       lo < hi
    loguniform [lo, hi]  exp(log lo + (log hi - log lo) * U),      0 < lo < hi
    randint [lo, hi]     an integer in [lo, hi),                   lo < hi
    """

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_mapping(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError("expected one form: {grid: [...]}, {choice: [...]}, {uniform: [lo, hi]}, "
                             "{loguniform: [lo, hi]} or {randint: [lo, hi]}")
        return v

    @field_validator("grid", "choice")
    @classmethod
    def _not_empty(cls, v: list | None) -> list | None:
        if v is not None and not v:
            raise ValueError("empty: give at least one value")
        return v

    @field_validator("uniform", "randint")
    @classmethod
    def _ordered(cls, v: tuple | None) -> tuple | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"need low < high, got [{v[0]}, {v[1]}]")
        return v

    @field_validator("loguniform")
    @classmethod
    def _log_ordered(cls, v: tuple | None) -> tuple | None:
        if v is not None:
            if v[0] <= 0:
                raise ValueError(f"low must be > 0 on a log scale, got {v[0]}")
            if not v[0] < v[1]:
                raise ValueError(f"need low < high, got [{v[0]}, {v[1]}]")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> Dim:
        given = [f for f in FORMS if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(FORMS)} (got {', '.join(given) or 'none'})")
        return self

    @property
    def form(self) -> str:
        return next(f for f in FORMS if getattr(self, f) is not None)

    @property
    def args(self) -> Any:
        return getattr(self, self.form)

    @property
    def size(self) -> int:
        """How many trials this dimension multiplies the sample count by (grid only)."""
        return len(self.grid) if self.grid is not None else 1

    def candidates(self) -> list[Any]:
        """The values a trial can take that validation checks: all listed values, or both range ends."""
        if self.form in ("grid", "choice"):
            return list(self.args)
        lo, hi = self.args
        return [lo, hi - 1] if self.form == "randint" else [lo, hi]

    def describe(self) -> str:
        if self.form in ("grid", "choice"):
            return f"{self.form} {_fmt(list(self.args))}"
        bracket = ")" if self.form == "randint" else "]"
        return f"{self.form} [{_fmt(self.args[0])}, {_fmt(self.args[1])}{bracket}"


# ------------------------------------------------------------------------------------------- sections ----


class SearchConfig(_Strict):
    """``random``: Ray's BasicVariantGenerator (grid + random sampling); ``grid`` is the same; ``optuna``: TPE."""

    algorithm: Literal["random", "grid", "optuna"] = "random"
    seed: int | None = 0


class NoScheduler(_Strict):
    kind: Literal["none"] = "none"


class AshaScheduler(_Strict):
    """Asynchronous successive halving on the objective, time counted in evaluations."""

    kind: Literal["asha"] = "asha"
    grace_evals: int = Field(5, ge=1, description="evaluations before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1)


class PbtScheduler(_Strict):
    """Population based training: every ``interval_evals`` the worst quantile copies the best (checkpoint and
    config) and perturbs ``mutations`` (ranges: x0.8 / x1.2, clamped to the range; choices: a neighbour)."""

    kind: Literal["pbt"] = "pbt"
    interval_evals: int = Field(10, ge=1)
    mutations: dict[str, Any] = Field(default_factory=dict, description="{trial key: space form}")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)


Scheduler = Annotated[NoScheduler | AshaScheduler | PbtScheduler, Field(discriminator="kind")]
SCHEDULER_KINDS = ("none", "asha", "pbt")


class ResourcesConfig(_Strict):
    """Per trial. Fractional GPUs (< 1) let several trials share one GPU."""

    cpu: float = Field(1.0, ge=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"above 1, GPUs are whole numbers (got {v})")
        return v


class StorageConfig(_Strict):
    """``path``: a folder, or ``s3://bucket/prefix`` / ``gs://...``; ``endpoint``: a custom S3 URL (MinIO, moto);
    ``shared``: the folder is on a filesystem every node sees (NFS), so a multi-node cluster can use it."""

    path: str = "./results"
    endpoint: str | None = None
    shared: bool = False

    @property
    def scheme(self) -> str | None:
        m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", self.path)
        return m.group(1).lower() if m else None


class CheckpointConfig(_Strict):
    every: int | None = Field(5, ge=1, description="evaluations between checkpoints; null = never")
    keep: int = Field(2, ge=1, description="latest checkpoints kept per trial")


class FailureConfig(_Strict):
    retries: int = Field(2, ge=0, description="restarts of a crashed trial, from its last checkpoint")


class WandbConfig(_Strict):
    project: str = Field("tightrope", min_length=1)
    entity: str | None = None
    group: str | None = Field(None, description="null = the sweep name")
    mode: Literal["offline", "online", "disabled"] = "offline"


# ----------------------------------------------------------------------------------------------- spec ----


class SweepSpec(_Strict):
    """A validated sweep. Build it with ``load_spec(path)`` or ``SweepSpec.from_dict(data)``: both run every
    check; constructing the model directly checks only the shape of each section."""

    name: str
    trial: dict[str, Any] = Field(default_factory=dict, description="nested trial settings (dotted keys expanded)")
    space: dict[str, Dim] = Field(default_factory=dict, description="{dotted trial key: Dim}")
    samples: int = Field(1, ge=1)
    search: SearchConfig = SearchConfig()
    scheduler: Scheduler = NoScheduler()
    resources: ResourcesConfig = ResourcesConfig()
    max_concurrent: int = Field(0, ge=0, description="0 = as many as resources allow")
    storage: StorageConfig = StorageConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    failure: FailureConfig = FailureConfig()
    wandb: WandbConfig = WandbConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("use 1-40 characters from a-z, 0-9 and '-', starting and ending with a letter or "
                             "digit (it names the W&B group, the results folder and Kubernetes objects)")
        return v

    @field_validator("trial", mode="before")
    @classmethod
    def _nest_trial(cls, v: Any) -> Any:
        return {} if v is None else _nest(v)[0] if isinstance(v, dict) else v

    @field_validator("space", mode="before")
    @classmethod
    def _flat_space(cls, v: Any) -> Any:
        return {} if v is None else _flatten_space(v) if isinstance(v, dict) else v

    @field_validator("storage", mode="before")
    @classmethod
    def _storage_shorthand(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) or v is None else v

    @classmethod
    def from_dict(cls, data: Any, source: str = "") -> SweepSpec:
        """Validate a parsed spec; raise SpecError listing every problem."""
        return _check(data, source)

    # -- what the orchestrator asks ------------------------------------------------------------------------

    def trial_config(self, overrides: dict[str, Any] | None = None) -> TrialConfig:
        """The trial block with dotted ``overrides`` (one point of the space) laid over it."""
        return resolve(dict(overrides or {}), base=self.trial)

    def n_trials(self) -> int:
        """samples * the product of the grid sizes (Ray's BasicVariantGenerator; optuna has no grids)."""
        return self.samples * math.prod(d.size for d in self.space.values())

    def sweep_dir(self) -> str:
        """Where the sweep's results live: ``storage.path/name`` (an absolute folder, or a URI)."""
        if self.storage.scheme:
            return f"{self.storage.path.rstrip('/')}/{self.name}"
        return os.path.join(os.path.abspath(os.path.expanduser(self.storage.path)), self.name)

    def wandb_group(self) -> str:
        return self.wandb.group or self.name

    def mutations(self) -> dict[str, Dim]:
        """PBT's mutations as Dims ({} unless the scheduler is PBT)."""
        if not isinstance(self.scheduler, PbtScheduler):
            return {}
        return {k: Dim.model_validate(v) for k, v in _flatten_space(self.scheduler.mutations).items()}

    def eval_range(self) -> tuple[int, int]:
        """(fewest, most) evaluations a trial makes: train.steps // eval.every over every candidate value."""
        base = self.trial_config()
        steps = self._values("train.steps", base.train.steps)
        every = self._values("eval.every", base.eval.every)
        return min(steps) // max(every), max(steps) // min(every)

    def _values(self, key: str, default: Any) -> list[Any]:
        dims = [d for d in (self.space.get(key), self.mutations().get(key)) if d is not None]
        vals = [v for d in dims for v in d.candidates() if isinstance(v, int | float) and not isinstance(v, bool)]
        return vals or [default]

    def space_table(self) -> str:
        """A short text table of the space: key, form, values, and how many trials each grid multiplies."""
        rows = [(k, d.describe(), f"x{d.size}" if d.form == "grid" else "") for k, d in self.space.items()]
        rows += [(f"{k} (pbt)", d.describe(), "") for k, d in self.mutations().items()]
        if not rows:
            return "  (no search space: every trial uses the trial block)"
        w = max(len(r[0]) for r in rows)
        return "\n".join(f"  {k:<{w}}  {desc}  {n}".rstrip() for k, desc, n in rows)


# ------------------------------------------------------------------------------------------ checking ----


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a YAML spec; raise SpecError (missing file, YAML syntax with its line, every field)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError([(str(p), "no such file" if not p.exists() else "not a file")])
    try:
        data = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        raise SpecError([(where, f"YAML: {e.problem or e.context}")]) from None
    except yaml.YAMLError as e:
        raise SpecError([(str(p), f"YAML: {e}")]) from None
    return _check(data, str(p))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


Errors = list[tuple[str, str]]


def _check(data: Any, source: str = "") -> SweepSpec:
    if data is None:
        raise SpecError([(source, "empty spec")])
    if not isinstance(data, dict):
        raise SpecError([(source, f"a spec is a mapping of sections, got {type(data).__name__}")])
    errors: Errors = []
    fields = SweepSpec.model_fields
    for key in data:
        if key not in fields:
            errors.append((str(key), f"unknown key (sections: {', '.join(fields)})"))
    if "name" not in data:
        errors.append(("name", "missing: the sweep needs a name"))

    # 1. the shape of each section, one at a time, so one bad section does not hide the others
    spec = SweepSpec.model_construct()
    ok = set(fields)  # the sections whose shape is right (or left at their defaults)
    for key, value in data.items():
        if key not in fields or key == "space":
            continue
        try:
            spec = SweepSpec.__pydantic_validator__.validate_assignment(spec, key, value)
        except ValidationError as e:
            errors.extend(_pydantic_errors(e))
            ok.discard(key)
    space_raw = data.get("space") or {}
    space: dict[str, Dim] = {}
    if not isinstance(space_raw, dict):
        errors.append(("space", f"a mapping {{trial key: form}}, got {type(space_raw).__name__}"))
    else:
        space, errs = _parse_dims(_flatten_space(space_raw), "space")
        errors.extend(errs)
        spec = SweepSpec.__pydantic_validator__.validate_assignment(spec, "space", space)
    mutations: dict[str, Dim] = {}
    if isinstance(spec.scheduler, PbtScheduler) and "scheduler" in ok:
        mutations, errs = _parse_dims(_flatten_space(spec.scheduler.mutations), "scheduler.mutations")
        errors.extend(errs)

    # 2. the trial block on its own
    trial_raw = data.get("trial") or {}
    tree, nest_errors = _nest(trial_raw) if isinstance(trial_raw, dict) else ({}, [])
    errors.extend(("trial." + p, m) for p, m in nest_errors)
    trial_errors: set[tuple[str, str]] = set()
    base: TrialConfig | None = None
    if isinstance(trial_raw, dict):
        try:
            base = resolve({}, base=tree)
        except ConfigError as e:
            trial_errors = set(e.errors)
            errors.extend(("trial." + p, m) for p, m in e.errors)

    # 3. the rules that tie sections together, then every candidate trial
    errors.extend(_cross_checks(spec, ok, space, mutations, tree, base))
    dims = [("space", k, d) for k, d in space.items()]
    dims += [("scheduler.mutations", k, d) for k, d in mutations.items() if k not in space]
    if isinstance(trial_raw, dict) and not nest_errors:
        if base is None:  # check the space over the trial keys that are fine, not over none at all
            tree = _without(tree, [p for p, _ in trial_errors])
            trial_errors |= _errors_of(tree)
        errors.extend(_candidate_errors(tree, dims, trial_errors))

    if errors:
        raise SpecError(_unique(errors))
    return SweepSpec.model_validate(data)


def _pydantic_errors(e: ValidationError, prefix: str = "") -> Errors:
    out = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"] if not str(x).startswith("function-")]
        if loc[:1] == ["scheduler"] and loc[1:2] and loc[1] in SCHEDULER_KINDS:
            loc.pop(1)  # pydantic puts the union tag in the path; a user never wrote it
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            if loc[:1] == ["space"] or prefix.startswith(("space", "scheduler.mutations")):
                msg = f"unknown form (use one of {', '.join(FORMS)})"
        elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("kind")
            got = err.get("ctx", {}).get("tag")
            msg = f"unknown scheduler {got!r}" if got else "missing"
            msg += f": use one of {', '.join(SCHEDULER_KINDS)}"
        elif err["type"] == "literal_error":
            msg = f"{_fmt(err['input'])} is not one of {err['ctx']['expected']}"
        out.append((".".join(filter(None, [prefix, *loc])), msg))
    return out


def _parse_dims(raw: dict[str, Any], prefix: str) -> tuple[dict[str, Dim], Errors]:
    dims, errors = {}, []
    for key, value in raw.items():
        where = f"{prefix}.{key}"
        if not _known_key(key):
            errors.append((where, "unknown key: not a trial setting (see `tightrope train --help` keys)"))
            continue
        try:
            dim = Dim.model_validate(value)
        except ValidationError as e:
            errors.extend(_pydantic_errors(e, where))
            continue
        if dim.form in ("uniform", "loguniform") and _is_int_key(key):
            errors.append((f"{where}.{dim.form}", "an integer setting: use randint, grid or choice"))
            continue
        dims[key] = dim
    return dims, errors


def _cross_checks(spec: SweepSpec, ok: set[str], space: dict[str, Dim], mutations: dict[str, Dim],
                  tree: dict, base: TrialConfig | None) -> Errors:
    errors: Errors = []
    trial_keys = set(_flat(tree))
    grids = [k for k, d in space.items() if d.form == "grid"]
    for k in space:
        if k in trial_keys:
            errors.append((f"space.{k}", "also set in trial: remove one (the space decides)"))

    if "search" in ok and spec.search.algorithm == "optuna":
        for k in grids:
            errors.append((f"space.{k}.grid", "optuna cannot take a grid (Ray's grid_search): use choice, which "
                                              "optuna samples, or search.algorithm: random"))

    r = spec.resources
    if "resources" in ok:
        if r.cpu == 0 and r.gpu == 0:
            errors.append(("resources", "a trial needs cpu > 0 or gpu > 0"))
        cuda = base is not None and base.train.device == "cuda"
        if cuda and r.gpu == 0:
            errors.append(("resources.gpu", "trial sets train.device: cuda but asks for no GPU (Ray would hide it)"))

    s = spec.storage
    if "storage" in ok:
        if s.scheme and s.scheme not in URI_SCHEMES:
            errors.append(("storage.path", f"unsupported scheme {s.scheme}:// (use a folder, {', '.join(URI_SCHEMES)})"))
        if s.endpoint is not None:
            if s.scheme != "s3":
                errors.append(("storage.endpoint", "a custom endpoint needs an s3:// path"))
            if not re.match(r"^https?://[^/\s]+", s.endpoint):
                errors.append(("storage.endpoint", f"expected http(s)://host[:port], got {s.endpoint!r}"))

    sch = spec.scheduler
    evals = _eval_range(tree, space, mutations, base)
    if "scheduler" in ok and isinstance(sch, AshaScheduler) and evals and sch.grace_evals > evals[1]:
        errors.append(("scheduler.grace_evals", f"{sch.grace_evals} is more than a trial's {evals[1]} evaluations"))
    if "scheduler" in ok and isinstance(sch, PbtScheduler):
        every, keep = spec.checkpoint.every, spec.checkpoint.keep
        if "checkpoint" not in ok:
            pass
        elif every is None:
            errors.append(("checkpoint.every", "PBT needs checkpoints: it restarts trials from other trials' "
                                               "checkpoints (set checkpoint.every)"))
        elif sch.interval_evals % every:
            errors.append(("scheduler.interval_evals", f"make it a multiple of checkpoint.every ({every}) so an "
                                                       "exploit starts from a checkpoint taken at that moment"))
        if keep < 3 and "checkpoint" in ok:
            errors.append(("checkpoint.keep", f"PBT needs keep >= 3 (got {keep}): a checkpoint it is about to "
                                              "copy must not be deleted first"))
        if not sch.mutations:
            errors.append(("scheduler.mutations", "PBT needs at least one key to mutate"))
        if evals and sch.interval_evals >= evals[1]:
            errors.append(("scheduler.interval_evals", f"{sch.interval_evals} >= a trial's {evals[1]} evaluations: "
                                                       "PBT would never act"))
        if "samples" in ok and spec.samples * math.prod(d.size for d in space.values()) < 2:
            errors.append(("samples", "PBT needs a population: at least 2 trials"))
        for k in grids:
            errors.append((f"space.{k}.grid", "PBT copies a better trial's whole config when it exploits, so a "
                                              "grid would not stay a grid: use choice, or scheduler asha / none"))
        for k, d in mutations.items():
            where = f"scheduler.mutations.{k}"
            if d.form == "grid":
                errors.append((f"{where}.grid", "a mutation is a choice or a range, not a grid: use choice"))
            if k.startswith(BASE_PREFIXES) or k == "task.name":
                errors.append((where, "cannot change in the middle of a trial (it shapes the model/checkpoint)"))
            if k in trial_keys:
                errors.append((where, "also set in trial: remove it there (PBT samples the start value)"))
    return errors


def _eval_range(tree: dict, space: dict[str, Dim], mutations: dict[str, Dim],
                base: TrialConfig | None) -> tuple[int, int] | None:
    if base is None:
        return None
    vals = {}
    for key, default in (("train.steps", base.train.steps), ("eval.every", base.eval.every)):
        cands = [v for dims in (space, mutations) if key in dims for v in dims[key].candidates()]
        cands = [v for v in cands if isinstance(v, int) and not isinstance(v, bool) and v > 0]
        vals[key] = cands or [default]
    return min(vals["train.steps"]) // max(vals["eval.every"]), max(vals["train.steps"]) // min(vals["eval.every"])


def _candidate_errors(tree: dict, dims: list[tuple[str, str, Dim]], skip: set[tuple[str, str]]) -> Errors:
    """Resolve every combination of candidate values over the trial block; blame the space key at fault."""
    if not dims:
        return []
    cands = []
    for _, _, d in dims:
        seen, vals = set(), []
        for v in d.candidates():
            if _key(v) not in seen:
                seen.add(_key(v))
                vals.append(v)
        cands.append(vals)
    errors: Errors = []
    counts: dict[str, int] = {}
    for combo in _combos(cands):
        point = {k: v for (_, k, _), v in zip(dims, combo, strict=True)}
        try:
            resolve(point, base=tree)
        except ConfigError as e:
            for p, m in e.errors:
                if (p, m) in skip:
                    continue
                where, msg = _blame(p, m, dims, point)
                if (where, msg) in errors:
                    continue
                counts[where] = counts.get(where, 0) + 1
                if counts[where] <= 3:  # a few examples per field are enough
                    errors.append((where, msg))
    return errors


def _blame(p: str, m: str, dims: list[tuple[str, str, Dim]], point: dict[str, Any]) -> tuple[str, str]:
    def hit(k: str) -> bool:
        return p == k or p.startswith(k + ".") or k.startswith(p + ".")

    owner = next((x for x in dims if hit(x[1])), None)
    if owner is None:  # the rule sits on a trial key; blame a space key the message names
        owner = next((x for x in dims if x[1] in m), None)
    if owner is None:
        where_all = ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())
        return "space", f"with {where_all}: {p}: {m}"
    prefix, key, dim = owner
    v = _fmt(point[key])
    context = [f"{k}={_fmt(point[k])}" for _, k, _ in dims if k != key and k in m and _fmt(point[k]) not in m]
    ctx = f" (with {', '.join(context)})" if context else ""
    detail = m if hit(key) else f"{p}: {m}"
    return f"{prefix}.{key}.{dim.form}", f"{v}{ctx}: {detail}"


def _combos(cands: list[list[Any]]):
    total = math.prod(len(c) for c in cands)
    if total <= MAX_COMBOS:
        yield from itertools.product(*cands)
        return
    longest = max(len(c) for c in cands)  # every candidate at least once, then a fixed random sample
    for i in range(longest):
        yield tuple(c[i % len(c)] for c in cands)
    rng = random.Random(0)
    for _ in range(MAX_COMBOS - longest):
        yield tuple(rng.choice(c) for c in cands)


# ------------------------------------------------------------------------------------------- helpers ----


def _without(tree: dict, paths: list[str]) -> dict:
    """A copy of a nested tree without the given dotted keys (or their closest existing parent)."""
    flat = _flat(tree)
    keep = {k: v for k, v in flat.items() if not any(k == p or k.startswith(p + ".") or p.startswith(k + ".")
                                                     for p in paths)}
    return _nest(keep)[0]


def _errors_of(tree: dict) -> set[tuple[str, str]]:
    try:
        resolve({}, base=tree)
    except ConfigError as e:
        return set(e.errors)
    return set()


def _nest(tree: dict, prefix: str = "") -> tuple[dict, Errors]:
    """``{"train.steps": 1, "model": {"d_model": 8}}`` -> nested dict; a key given twice is an error."""
    out: dict = {}
    errors: Errors = []
    for key, value in _flat_items(tree, prefix):
        try:
            node = out
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError([(key, f"'{part}' is set to a value, not a section")])
            if parts[-1] in node:
                raise ConfigError([(key, "given twice (dotted and nested)")])
            set_dotted(out, key, value)
        except ConfigError as e:
            errors.extend(e.errors)
    return out, errors


def _flat_items(tree: dict, prefix: str = ""):
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not key.startswith("task.options"):
            yield from _flat_items(v, key + ".")
        else:
            yield key, v


def _flat(tree: dict) -> dict[str, Any]:
    return dict(_flat_items(tree))


def _flatten_space(raw: dict, prefix: str = "") -> dict[str, Any]:
    """Space keys are dotted; a nested section (``controller: {k_i: {...}}``) is accepted too."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not set(v) & set(FORMS) and _is_section(key):
            out.update(_flatten_space(v, key + "."))
        else:
            out[key] = v
    return out


def _field(key: str):
    """The pydantic field a dotted trial key names, or None."""
    model: Any = TrialConfig
    field = None
    for part in key.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        model = field.annotation
    return field


def _is_section(key: str) -> bool:
    f = _field(key)
    return f is not None and isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)


def _known_key(key: str) -> bool:
    if key.startswith("task.options.") and len(key) > len("task.options."):
        return True
    return _field(key) is not None and not _is_section(key) and key != "task.options"


def _is_int_key(key: str) -> bool:
    f = _field(key)
    if f is None:
        return False
    types = get_args(f.annotation) or (f.annotation,)
    return int in types and float not in types


def _key(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _fmt(v: Any) -> str:
    """A value as the user wrote it in YAML: null, 0.05, [lambda, controller]."""
    if isinstance(v, tuple):
        v = list(v)
    return yaml.safe_dump(v, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def _unique(errors: Errors) -> Errors:
    seen, out = set(), []
    for e in errors:
        if e not in seen:
            seen.add(e)
            out.append(e)
    return out


# -------------------------------------------------------------------------------------------- command ----


def _task_names(spec) -> list:
    dim = spec.space.get("task.name")
    return list(dim.candidates()) if dim is not None else []


def validate_cmd(args) -> int:
    """``tightrope validate SPEC``: check without Ray; print the trial count and the space, or raise SpecError."""
    spec = load_spec(args.spec)
    from trainables.tasks import task_class

    for name in {spec.trial_config().task.name, *map(str, _task_names(spec))}:
        try:
            task_class(name)  # an own task that cannot be imported would fail every trial
        except ConfigError as e:
            raise SpecError([(f"trial.{p}" if p.startswith("task.") else p, m) for p, m in e.errors]) from None
    extra = f" ({spec.samples} sample{'s' * (spec.samples != 1)} x grid)" if spec.space else ""
    print(f"ok: {spec.n_trials()} trials{extra}, search {spec.search.algorithm}, scheduler {spec.scheduler.kind}")
    print(spec.space_table())
    print(f"results: {spec.sweep_dir()}")
    return 0
