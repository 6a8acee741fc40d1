"""Controllers for the regulariser strength lambda: keep val CE at (or under) a target while lambda grows.

The trial minimises ``CE + lambda * S`` (S = sparsity regulariser in [0, 1]). A controller watches the
constraint ``CE <= target`` and sets lambda: it **raises** lambda while the constraint holds with room to spare
and **lowers** it when the constraint is violated.

Sign convention, shared by every controller here::

    e = val_ce - target        # nats per token; e > 0: violated (lambda must fall), e < 0: slack (lambda rises)

Units: CE and e in nats/token; ``u = log lambda`` is dimensionless; gains are "change of u (or lambda) per nat
of violation per evaluation".

Robustness, shared by every controller: a non-finite measurement (NaN, +inf, -inf) is *reported* (a
``RuntimeWarning`` and the counter ``rejected`` in the state) and is **not** integrated; violations are
saturated at ``+-E_MAX`` nats so that absurd finite values (1e30) cannot overflow into NaN; lambda is always
finite and >= 0. ``update_(..., frozen=True)`` (LR warm-up) changes nothing.

    ctrl = make_controller(cfg.controller, target=base_ce + 0.05)
    for step in ...:
        ctrl.observe_(train_ce)                                 # every training step (GECO uses it)
        if step % every == 0:
            lam = ctrl.update_(val_ce, frozen=step < warmup)    # every evaluation
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from trainables.config import RESET_PARTS, ControllerConfig

E_MAX = 1e6  # nats: violations beyond this are saturated (a CE this large only means "broken")


def _sat(e: float) -> float:
    return min(max(e, -E_MAX), E_MAX)


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


class Controller:
    """Common state and API. Subclasses implement ``_step(e) -> None`` acting on their own state."""

    kind = "base"

    def __init__(self, cfg: ControllerConfig, target: float):
        if not math.isfinite(target):
            raise ValueError(f"target must be finite, got {target}")
        self.cfg = cfg
        self.target = float(target)
        self.rejected = 0  # non-finite measurements seen and ignored
        self.updates = 0  # evaluations integrated

    # ---- API -------------------------------------------------------------------------------------------
    @property
    def lam(self) -> float:
        raise NotImplementedError

    def observe_(self, train_ce: float) -> None:
        """Every training step: the training-batch CE. Only GECO uses it."""

    def update_(self, val_ce: float, *, frozen: bool = False) -> float:
        """Every evaluation: integrate ``e = val_ce - target`` unless ``frozen``; return the new lambda."""
        if frozen:
            return self.lam
        if not self._accept(val_ce, "val_ce"):
            return self.lam
        self._step(_sat(float(val_ce) - self.target))
        self.updates += 1
        return self.lam

    def reset_(self, parts: set[str] | list[str] | tuple[str, ...]) -> None:
        """``"lambda"``: lambda back to ``lambda_init``; ``"controller"``: integral / EMA state cleared.

        Other reset parts (optimizer, lr_warmup, gates) belong to the training loop and are ignored here.
        """
        parts = set(parts)
        unknown = parts - set(RESET_PARTS)
        if unknown:
            raise ValueError(f"unknown reset parts {sorted(unknown)}; known: {list(RESET_PARTS)}")
        if "lambda" in parts:
            self._reset_lambda()
        if "controller" in parts:
            self._reset_controller()

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "rejected": self.rejected, "updates": self.updates,
                **self._state()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("kind") != self.kind:
            raise ValueError(f"state of a {d.get('kind')!r} controller loaded into a {self.kind!r} one")
        self.target = float(d["target"])
        self.rejected = int(d["rejected"])
        self.updates = int(d["updates"])
        self._load(d)

    # ---- helpers ---------------------------------------------------------------------------------------
    def _accept(self, x: float, what: str) -> bool:
        try:
            ok = math.isfinite(float(x))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            self.rejected += 1
            warnings.warn(f"{self.kind} controller: non-finite {what} {x!r} ignored "
                          f"({self.rejected} so far); lambda held at {self.lam:.4g}", RuntimeWarning, stacklevel=3)
        return ok

    def _slew(self, du: float) -> float:
        s = self.cfg.slew
        return du if s is None else _clip(du, -s, s)

    def _step(self, e: float) -> None:
        raise NotImplementedError

    def _reset_lambda(self) -> None:
        raise NotImplementedError

    def _reset_controller(self) -> None:
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, d: dict[str, Any]) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lam={self.lam:.4g}, target={self.target:.4f})"


class PIController(Controller):
    """PI control of ``u = log lambda`` on the validation violation (the default).

    Every evaluation, with ``e = val_ce - target`` (nats; > 0 violated)::

        xi' = nu * xi + (1 - nu) * e                       # EMA of e; xi seeded with the first e
        du  = -k_i * e - k_p * (xi' - xi)                  # log-lambda per evaluation
        du  = clip(du, -slew, +slew)                       # optional slew limit
        v   = v + du ;  v = clip(v, log lmin, log lmax) if anti_windup
        u   = clip(v, log lambda_min, log lambda_max) ;  lambda = exp(u) ;  xi = xi'

    Signs: e < 0 (under target) makes du > 0, so lambda grows; e > 0 lowers it. The proportional term has the
    same sense: a violation that is *growing* (xi' > xi) lowers lambda. Integral action in log space gives zero
    steady-state error whatever the order of magnitude of lambda, and lambda = exp(u) > 0 always.

    Units: ``k_i`` and ``k_p`` in log-lambda per nat per evaluation; ``slew`` in log-lambda per evaluation.

    ``v`` is the integrator. With ``anti_windup`` (default) it is clipped with u, which is the update above
    exactly (v == u): the integral stops accumulating at a bound. Without it, v keeps integrating beyond the
    bound (lambda stays clipped), and lambda leaves the bound only once v has integrated back: classic windup,
    kept as an option so a sweep can show its effect.

    ``reset_({"lambda"})``: u = v = log lambda_init. ``reset_({"controller"})``: the EMA xi is re-seeded by the
    next measurement and any wound-up excess of v beyond the bounds is dropped.
    """

    kind = "pi"

    def __init__(self, cfg: ControllerConfig, target: float):
        super().__init__(cfg, target)
        self.lo, self.hi = math.log(cfg.lambda_min), math.log(cfg.lambda_max)
        self.u0 = _clip(math.log(cfg.lambda_init), self.lo, self.hi)
        self.v = self.u0  # integrator state (== u with anti-windup)
        self.xi: float | None = None  # EMA of e

    @property
    def u(self) -> float:
        return _clip(self.v, self.lo, self.hi)

    @property
    def lam(self) -> float:
        return math.exp(self.u)

    def _step(self, e: float) -> None:
        c = self.cfg
        xi = e if self.xi is None else self.xi
        xi_new = c.ema * xi + (1.0 - c.ema) * e
        du = self._slew(-c.k_i * e - c.k_p * (xi_new - xi))
        v = self.v + du
        self.v = _clip(v, self.lo, self.hi) if c.anti_windup else _clip(v, -1e6, 1e6)
        self.xi = xi_new

    def _reset_lambda(self) -> None:
        self.v = self.u0

    def _reset_controller(self) -> None:
        self.xi = None
        self.v = self.u

    def _state(self) -> dict[str, Any]:
        return {"v": self.v, "xi": self.xi}

    def _load(self, d: dict[str, Any]) -> None:
        self.v = float(d["v"])
        self.xi = None if d["xi"] is None else float(d["xi"])


class GECOController(Controller):
    """GECO (Rezende & Viola 2018) on an EMA of the *training-batch* constraint, in log space.

    Every training step, ``observe_(train_ce)``::

        C = nu * C + (1 - nu) * (train_ce - target)        # C seeded with the first observation

    Every evaluation::

        lambda <- lambda * exp(-lr * C)    i.e.   u <- clip(u - clip(lr * C, +-slew), log lmin, log lmax)

    Sign: GECO's multiplier mu sits on the *constraint* (``S + mu * (CE - target)``) and grows with
    ``exp(+lr * C)`` while violated. Here lambda weighs the *regulariser* (``CE + lambda * S``), i.e.
    lambda = 1 / mu up to scale, so the exponent flips: C < 0 (under target) raises lambda, C > 0 lowers it.
    Units: C in nats/token, ``lr`` in log-lambda per nat per evaluation.

    ``val_ce`` passed to ``update_`` is only checked (a non-finite one skips the update) and, before any
    training CE was observed, stands in for C. ``reset_({"controller"})`` clears C.
    """

    kind = "geco"

    def __init__(self, cfg: ControllerConfig, target: float):
        super().__init__(cfg, target)
        self.lo, self.hi = math.log(cfg.lambda_min), math.log(cfg.lambda_max)
        self.u0 = _clip(math.log(cfg.lambda_init), self.lo, self.hi)
        self.u = self.u0
        self.c: float | None = None  # EMA of train_ce - target

    @property
    def lam(self) -> float:
        return math.exp(self.u)

    def observe_(self, train_ce: float) -> None:
        if not self._accept(train_ce, "train_ce"):
            return
        e = _sat(float(train_ce) - self.target)
        self.c = e if self.c is None else self.cfg.ema * self.c + (1.0 - self.cfg.ema) * e

    def _step(self, e: float) -> None:
        c = e if self.c is None else self.c
        self.u = _clip(self.u + self._slew(-self.cfg.lr * c), self.lo, self.hi)

    def _reset_lambda(self) -> None:
        self.u = self.u0

    def _reset_controller(self) -> None:
        self.c = None

    def _state(self) -> dict[str, Any]:
        return {"u": self.u, "c": self.c}

    def _load(self, d: dict[str, Any]) -> None:
        self.u = float(d["u"])
        self.c = None if d["c"] is None else float(d["c"])


class AscentController(Controller):
    """Plain (projected) gradient ascent on lambda itself, from the validation violation.

    Every evaluation, with ``e = val_ce - target`` (nats; > 0 violated)::

        lambda <- clip(lambda - lr * e, 0, lambda_max)

    Sign: this is dual ascent on the constraint multiplier mu = 1/lambda written for the regulariser weight:
    e < 0 (under target) raises lambda, e > 0 lowers it, and lambda may reach exactly 0 (then the regulariser is
    off until the loss has slack again). Units: ``lr`` in lambda per nat per evaluation. ``slew`` is a limit on
    log-lambda and does not apply here; there is no controller state besides lambda.
    """

    kind = "ascent"

    def __init__(self, cfg: ControllerConfig, target: float):
        super().__init__(cfg, target)
        self.lam0 = float(cfg.lambda_init)
        self._lam = self.lam0

    @property
    def lam(self) -> float:
        return self._lam

    def _step(self, e: float) -> None:
        self._lam = _clip(self._lam - self.cfg.lr * e, 0.0, self.cfg.lambda_max)

    def _reset_lambda(self) -> None:
        self._lam = self.lam0

    def _reset_controller(self) -> None:
        pass

    def _state(self) -> dict[str, Any]:
        return {"lam": self._lam}

    def _load(self, d: dict[str, Any]) -> None:
        self._lam = float(d["lam"])


CONTROLLERS: dict[str, type[Controller]] = {c.kind: c for c in (PIController, GECOController, AscentController)}


def make_controller(cfg: ControllerConfig, target: float) -> Controller:
    """The controller named by ``cfg.kind`` ("pi", "geco", "ascent") for the given CE target (nats/token)."""
    try:
        cls = CONTROLLERS[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown controller kind {cfg.kind!r}; known: {sorted(CONTROLLERS)}") from None
    return cls(cfg, target)
