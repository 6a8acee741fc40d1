"""Controllers on toy plants with known fixed points, plus robustness, state and reset behaviour."""

import math
import warnings

import pytest

from trainables.config import ControllerConfig
from trainables.controller import AscentController, GECOController, PIController, make_controller

TARGET = 2.0


def cfg(**kw) -> ControllerConfig:
    return ControllerConfig(**kw)


def log_plant(lam: float, c0: float = 1.9, s: float = 0.02) -> float:
    """Static plant: val CE rises with log lambda. Fixed point lambda* = exp((TARGET - c0) / s) = e^5."""
    return c0 + s * math.log(lam)


LAM_STAR = math.exp((TARGET - 1.9) / 0.02)


def run(ctrl, plant, n: int, obs_per_eval: int = 0) -> list[float]:
    lams = []
    for _ in range(n):
        for _ in range(obs_per_eval):
            ctrl.observe_(plant(ctrl.lam))
        lams.append(ctrl.update_(plant(ctrl.lam)))
    return lams


def test_make_controller_by_kind():
    assert isinstance(make_controller(cfg(), TARGET), PIController)  # "pi" is the default
    assert isinstance(make_controller(cfg(kind="geco"), TARGET), GECOController)
    assert isinstance(make_controller(cfg(kind="ascent"), TARGET), AscentController)
    assert make_controller(cfg(lambda_init=0.5), TARGET).lam == pytest.approx(0.5)


def test_pi_reaches_fixed_point_of_static_plant():
    # u <- u - k_i*(c0 + s*u - target): contraction factor 1 - k_i*s = 0.4 per evaluation
    ctrl = make_controller(cfg(k_i=30.0, lambda_init=1e-2), TARGET)
    lams = run(ctrl, log_plant, 40)
    assert lams[-1] == pytest.approx(LAM_STAR, rel=1e-6)
    assert abs(log_plant(lams[-1]) - TARGET) < 1e-8
    assert all(b > a for a, b in zip(lams, lams[1:], strict=False) if a < LAM_STAR * 0.999)  # monotone rise


def test_pi_with_proportional_term_on_first_order_plant():
    # dynamic plant: y <- y + 0.3 * (c0 + s*log(lambda) - y); same fixed point, with lag
    y = [1.9]

    def plant(lam):
        y[0] += 0.3 * (log_plant(lam) - y[0])
        return y[0]

    ctrl = make_controller(cfg(k_i=10.0, k_p=20.0, ema=0.5, lambda_init=1e-2), TARGET)
    lams = run(ctrl, plant, 300)
    assert lams[-1] == pytest.approx(LAM_STAR, rel=1e-3)
    assert abs(y[0] - TARGET) < 1e-4


@pytest.mark.parametrize("kind", ["pi", "geco", "ascent"])
def test_direction_on_each_side_of_target(kind):
    for val, sign in ((TARGET - 0.05, +1), (TARGET + 0.05, -1)):
        ctrl = make_controller(cfg(kind=kind, lambda_init=1.0, k_i=1.0, k_p=1.0, lr=1.0), TARGET)
        for _ in range(3):
            ctrl.observe_(val)
        lam0 = ctrl.lam
        lam1 = ctrl.update_(val)
        lam2 = ctrl.update_(val)
        assert sign * (lam1 - lam0) > 0 and sign * (lam2 - lam1) > 0, (kind, val, lam0, lam1, lam2)


def test_pi_first_step_value():
    # xi seeded with the first e, so the k_p term is 0 at first: u1 = u0 - k_i*e
    ctrl = make_controller(cfg(k_i=2.0, k_p=100.0, lambda_init=1.0), TARGET)
    assert ctrl.update_(TARGET - 0.1) == pytest.approx(math.exp(0.2))
    # second: xi' = 0.9*(-0.1) + 0.1*(-0.3) = -0.12; du = -2*(-0.3) - 100*(-0.02) = 0.6 + 2.0
    assert ctrl.update_(TARGET - 0.3) == pytest.approx(math.exp(0.2 + 2.6))


def test_geco_reaches_fixed_point_from_training_ce():
    # train CE = plant + 0 noise; C is the EMA over 20 observations per evaluation; u <- u - lr*C
    ctrl = make_controller(cfg(kind="geco", lr=10.0, ema=0.9, lambda_init=1e-2), TARGET)
    lams = run(ctrl, log_plant, 200, obs_per_eval=20)
    assert lams[-1] == pytest.approx(LAM_STAR, rel=1e-3)


def test_geco_uses_training_not_validation_ce():
    ctrl = make_controller(cfg(kind="geco", lr=1.0, lambda_init=1.0), TARGET)
    ctrl.observe_(TARGET - 0.5)  # training says: slack of 0.5 nats
    lam = ctrl.update_(TARGET + 10.0)  # validation would say violated; GECO follows training
    assert lam == pytest.approx(math.exp(0.5))


def test_ascent_reaches_fixed_point_of_linear_plant():
    # val CE = c0 + s*lambda, lambda* = (target - c0)/s = 50; factor 1 - lr*s = 0.5
    ctrl = make_controller(cfg(kind="ascent", lr=500.0, lambda_init=1e-2), TARGET)
    lams = run(ctrl, lambda lam: 1.95 + 1e-3 * lam, 60)
    assert lams[-1] == pytest.approx(50.0, rel=1e-6)


def test_ascent_projects_at_zero():
    ctrl = make_controller(cfg(kind="ascent", lr=1.0, lambda_init=0.1), TARGET)
    assert ctrl.update_(TARGET + 1.0) == 0.0
    assert ctrl.update_(TARGET - 0.25) == pytest.approx(0.25)


BAD = [math.nan, math.inf, -math.inf, 1e30, -1e30, 1e308, -1e308]


@pytest.mark.parametrize("kind", ["pi", "geco", "ascent"])
@pytest.mark.parametrize("anti_windup", [True, False])
def test_lambda_finite_nonneg_whatever_it_is_fed(kind, anti_windup):
    c = cfg(kind=kind, k_i=30.0, k_p=5.0, lr=1e300 if kind == "ascent" else 5.0, anti_windup=anti_windup)
    ctrl = make_controller(c, TARGET)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for x in BAD * 3 + [TARGET - 0.1] + BAD:
            ctrl.observe_(x)
            lam = ctrl.update_(x)
            assert math.isfinite(lam) and lam >= 0, (x, lam)
            assert math.isfinite(ctrl.lam) and ctrl.lam == lam
            if kind != "ascent":
                assert c.lambda_min * (1 - 1e-12) <= lam <= c.lambda_max * (1 + 1e-12)
    n_bad = 3 * 4  # nan, inf, -inf per pass, four passes
    per_call = 2 if kind == "geco" else 1  # GECO also checks observe_
    assert ctrl.state_dict()["rejected"] == n_bad * per_call
    assert sum(issubclass(x.category, RuntimeWarning) for x in w) == n_bad * per_call


@pytest.mark.parametrize("kind", ["pi", "geco", "ascent"])
def test_nonfinite_is_not_integrated(kind):
    ctrl = make_controller(cfg(kind=kind), TARGET)
    ref = make_controller(cfg(kind=kind), TARGET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for x in [TARGET - 0.01, math.nan, TARGET + 0.02, math.inf, -math.inf, TARGET - 0.03]:
            ctrl.observe_(x)
            ctrl.update_(x)
    for x in [TARGET - 0.01, TARGET + 0.02, TARGET - 0.03]:
        ref.observe_(x)
        ref.update_(x)
    assert ctrl.lam == ref.lam


@pytest.mark.parametrize("kind", ["pi", "geco", "ascent"])
def test_state_dict_round_trip_reproduces_future(kind):
    c = cfg(kind=kind, k_i=5.0, k_p=3.0, lr=2.0, slew=0.5)
    a = make_controller(c, TARGET)
    seq = [TARGET + 0.1 * math.sin(i) for i in range(40)]
    for x in seq[:20]:
        a.observe_(x + 0.01)
        a.update_(x)
    b = make_controller(c, TARGET + 1.0)  # wrong target on purpose: the state carries it
    b.load_state_dict(a.state_dict())
    fa, fb = [], []
    for x in seq[20:]:
        for ctrl, out in ((a, fa), (b, fb)):
            ctrl.observe_(x + 0.01)
            out.append(ctrl.update_(x))
    assert fa == fb
    with pytest.raises(ValueError):
        make_controller(cfg(kind="pi" if kind != "pi" else "geco"), TARGET).load_state_dict(a.state_dict())


def test_reset_parts_pi():
    ctrl = make_controller(cfg(k_i=10.0, k_p=10.0, lambda_init=1e-2), TARGET)
    for _ in range(5):
        ctrl.update_(TARGET - 0.1)
    assert ctrl.lam > 1e-2 and ctrl.xi is not None
    lam = ctrl.lam
    ctrl.reset_({"controller", "optimizer", "gates"})  # loop parts are ignored here
    assert ctrl.lam == lam and ctrl.xi is None
    ctrl.reset_({"lambda"})
    assert ctrl.lam == pytest.approx(1e-2)
    with pytest.raises(ValueError):
        ctrl.reset_({"lamda"})


def test_reset_parts_geco_and_ascent():
    g = make_controller(cfg(kind="geco", lambda_init=1e-2), TARGET)
    g.observe_(TARGET - 1.0)
    g.update_(TARGET)
    assert g.lam > 1e-2 and g.c is not None
    g.reset_({"lambda"})
    assert g.lam == pytest.approx(1e-2) and g.c is not None
    g.reset_({"controller"})
    assert g.c is None
    a = make_controller(cfg(kind="ascent", lambda_init=1e-2), TARGET)
    a.update_(TARGET - 1.0)
    a.reset_({"lambda"})
    assert a.lam == pytest.approx(1e-2)


@pytest.mark.parametrize("kind", ["pi", "geco", "ascent"])
def test_frozen_holds_still(kind):
    ctrl = make_controller(cfg(kind=kind, k_p=1.0), TARGET)
    ctrl.observe_(TARGET - 0.5)
    before, lam0 = ctrl.state_dict(), ctrl.lam
    for x in [TARGET - 1.0, TARGET + 1.0, math.nan]:
        assert ctrl.update_(x, frozen=True) == lam0
    assert ctrl.state_dict() == before


@pytest.mark.parametrize("kind", ["pi", "geco"])
def test_slew_limit_bounds_change_of_log_lambda(kind):
    ctrl = make_controller(cfg(kind=kind, k_i=1000.0, k_p=1000.0, lr=1000.0, slew=0.25, lambda_init=1.0), TARGET)
    us = [math.log(ctrl.lam)]
    for x in [TARGET - 1.0] * 5 + [TARGET + 2.0] * 5 + [TARGET - 0.0001]:
        ctrl.observe_(x)
        us.append(math.log(ctrl.update_(x)))
    steps = [b - a for a, b in zip(us, us[1:], strict=False)]
    assert max(abs(s) for s in steps) <= 0.25 + 1e-12
    assert steps[:5] == pytest.approx([0.25] * 5)  # saturated while the error is big
    assert min(steps) == pytest.approx(-0.25)  # and on the way down (GECO: after its EMA lag)


def test_anti_windup():
    # 20 evaluations far under target drive u to log lambda_max; then over target.
    def trajectory(aw):
        ctrl = make_controller(cfg(k_i=1.0, lambda_max=10.0, lambda_init=1.0, anti_windup=aw), TARGET)
        for _ in range(20):
            ctrl.update_(TARGET - 1.0)
        assert ctrl.lam == pytest.approx(10.0)
        return [ctrl.update_(TARGET + 0.5) for _ in range(4)]

    with_aw, without = trajectory(True), trajectory(False)
    assert with_aw[0] == pytest.approx(10.0 * math.exp(-0.5))  # leaves the bound at once
    # without: the integrator sits at u0 + 20 = 20 and must come down to log 10 = 2.3 first
    assert without == pytest.approx([10.0] * 4)


def test_pi_bounds_clip():
    ctrl = make_controller(cfg(k_i=1e6, lambda_min=1e-3, lambda_max=1e2, lambda_init=1.0), TARGET)
    assert ctrl.update_(TARGET - 1.0) == pytest.approx(1e2)
    assert ctrl.update_(TARGET + 1.0) == pytest.approx(1e-3)
