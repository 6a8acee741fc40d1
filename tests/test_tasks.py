"""Tasks: exact density on hand-made gate masks, the diagonal kept, the fused gate's gradient, own tasks."""

import math

import pytest
import torch

from trainables.config import ConfigError, resolve
from trainables.model import MASK_VALUE, build_model, causal_mask
from trainables.pretrain import Base, evaluate_ce
from trainables.tasks import (
    SparseAttentionTask,
    Task,
    WeightSparsityTask,
    _GatedProbs,
    count_edges,
    hard_gates,
    make_task,
    task_class,
)

TINY = {"model.n_layer": 2, "model.d_model": 16, "model.n_head": 2, "model.context": 8, "data.val_tokens": 64}


def tiny(**over):
    cfg = resolve({**TINY, **over})
    torch.manual_seed(0)
    return cfg, Base(state=build_model(cfg.model).state_dict(), val_ce=5.0, key="test", path="")


def val_set(n=4, T=8):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, T + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def test_count_edges_on_hand_made_masks():
    T = 4  # switchable edges per map: (1,0) (2,0) (2,1) (3,0) (3,1) (3,2) = 6
    keep = torch.zeros(2, 3, T, T, dtype=torch.bool)
    assert count_edges(keep) == (0, 36)
    keep[0, 0, 3, 1] = keep[1, 2, 2, 0] = True  # two switchable edges
    keep[:, :, 0, 0] = True  # diagonal edges do not count
    keep[0, 1, 1, 3] = True  # j > i is not an edge at all
    assert count_edges(keep) == (2, 36)
    assert count_edges(torch.ones(T, T, dtype=torch.bool)) == (6, 6)


def test_hard_gates_keep_the_diagonal_only_when_all_closed():
    T = 5
    keep = hard_gates(torch.full((2, 2, T, T), -3.0))
    assert torch.equal(keep, torch.eye(T, dtype=torch.bool).expand(2, 2, T, T))
    z = torch.full((T, T), 1.0)
    z[3, 1] = -1.0
    keep = hard_gates(z)
    expected = causal_mask(T, "cpu").clone()
    expected[3, 1] = False
    assert torch.equal(keep, expected)  # upper triangle off even though z > 0 there


@pytest.mark.parametrize("bias,density", [(-100.0, 0.0), (100.0, 1.0)])
def test_density_exact_when_gates_forced(bias, density):
    cfg, base = tiny(**{"task.gate_init_scale": 0.0, "task.gate_init_bias": bias})
    task = SparseAttentionTask(cfg, base)
    out = task.evaluate(val_set())
    assert out["density"] == density
    if bias > 0:  # every gate open: the gated model is the dense model
        dense = build_model(cfg.model)
        dense.load_state_dict(base.state)
        assert out["val/ce"] == pytest.approx(evaluate_ce(dense, val_set(), torch.device("cpu")), abs=1e-5)


def test_density_counts_switchable_edges_over_the_validation_set():
    cfg, base = tiny(**{"task.gate_init_scale": 1.0, "task.gate_init_bias": 1.5})
    task = SparseAttentionTask(cfg, base)
    x, y = val_set()
    logps = []
    hook_model = task.model

    def record(scores, layer):  # the evaluation's own rule, recomputed by hand: keep iff logp > -1.5
        p = scores.softmax(-1)
        logps.append(torch.log(p.clamp_min(1e-30)))
        return p

    with torch.no_grad():
        hook_model(x, record)
    T = x.size(1)
    strict = causal_mask(T, "cpu", strict=True)
    kept = sum(int(((lp > -1.5) & strict).sum()) for lp in logps)
    total = len(logps) * x.size(0) * cfg.model.n_head * T * (T - 1) // 2
    assert task.evaluate((x, y))["density"] == pytest.approx(kept / total, abs=1e-12)
    assert 0 < kept < total


def test_training_loss_regulariser_and_finite_gradients():
    cfg, base = tiny()
    task = SparseAttentionTask(cfg, base)
    x, y = val_set()
    ce, reg = task.loss(x, y)
    assert 0.0 <= float(reg.detach()) <= 1.0 and math.isfinite(float(ce.detach()))
    # init a=0.25, b=5: every switchable gate has P(on) = sigmoid(0.25 logp + 5) > 0.5 for logp > -20
    assert float(reg.detach()) > 0.9
    (ce + 10.0 * reg).backward()
    for p in [*task.model.parameters(), task.gates.a, task.gates.b]:
        assert p.grad is None or torch.isfinite(p.grad).all()
    assert task.gates.a.grad.abs().sum() > 0 and task.gates.b.grad.abs().sum() > 0


@pytest.mark.parametrize("tau,straight,renorm", [(0.5, False, True), (0.7, False, True), (0.5, True, True),
                                                 (0.5, False, False), (0.7, True, False)])
def test_fused_gate_matches_autograd_reference(tau, straight, renorm):
    torch.manual_seed(0)
    B, H, T = 3, 2, 7
    causal, strict = causal_mask(T, "cpu"), causal_mask(T, "cpu", strict=True)
    s = (torch.randn(B, H, T, T) + torch.zeros(T, T).masked_fill(~causal, MASK_VALUE)).requires_grad_()
    a = torch.tensor([0.25, 0.5], requires_grad=True)
    b = torch.tensor([1.0, -0.5], requires_grad=True)
    u, gw = torch.rand(B, H, T, T), torch.randn(B, H, T, T)
    w, rs = _GatedProbs.apply(s, a, b, u.clone(), tau, straight, renorm)
    ((w * gw).sum() + 3 * rs).backward()
    fused = (w.detach(), rs.detach(), s.grad.clone(), a.grad.clone(), b.grad.clone())
    s.grad = a.grad = b.grad = None
    logp = s.log_softmax(-1)
    p = logp.exp()
    z = a.view(1, H, 1, 1) * logp.masked_fill(~causal, 0) + b.view(1, H, 1, 1)
    gs = torch.sigmoid((z + u.logit()) / tau)
    g = gs + ((gs > 0.5).float() - gs).detach() if straight else gs
    g = torch.where(torch.eye(T, dtype=torch.bool), torch.ones_like(g), g)
    w2, rs2 = p * g, (torch.sigmoid(z) * strict).sum()
    if renorm:
        w2 = w2 / w2.sum(-1, keepdim=True)
    ((w2 * gw).sum() + 3 * rs2).backward()
    for got, want in zip(fused, (w2, rs2, s.grad, a.grad, b.grad), strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-5)


def test_reset_gates_in_place():
    cfg, base = tiny()
    task = SparseAttentionTask(cfg, base)
    a = task.gates.a
    with torch.no_grad():
        task.gates.a.add_(1.0)
        task.gates.b.sub_(2.0)
    task.reset_gates_()
    assert task.gates.a is a and torch.all(task.gates.a == 0.25) and torch.all(task.gates.b == 5.0)


def test_weight_sparsity_task():
    cfg, base = tiny(**{"task.name": "weight_sparsity"})
    task = make_task(cfg, base)
    assert isinstance(task, WeightSparsityTask) and isinstance(task, Task)
    x, y = val_set()
    ce, reg = task.loss(x, y)
    assert 0.0 < float(reg.detach()) <= 1.0
    (ce + reg).backward()
    out = task.evaluate((x, y))
    assert 0.0 < out["density"] <= 1.0 and math.isfinite(out["val/ce"])
    before = {k: v.clone() for k, v in task.gates.state_dict().items()}
    for p in task.gates.parameters():
        p.data.add_(3.0)
    task.reset_gates_()
    assert all(torch.equal(before[k], v) for k, v in task.gates.state_dict().items())


def test_own_task_by_import_path():
    cls = task_class("tests.plugins:NaNTask")
    assert cls.__name__ == "NaNTask" and issubclass(cls, SparseAttentionTask)
    cfg, base = tiny(**{"task.name": "tests.plugins:NaNTask", "task.options": {"nan_at": 3}})
    task = make_task(cfg, base)
    assert isinstance(task, SparseAttentionTask)
    assert math.isfinite(task.evaluate(val_set())["val/ce"])
    task.step = 3
    assert math.isnan(task.evaluate(val_set())["val/ce"])


@pytest.mark.parametrize("name", ["nope", "tests.no_such_module:X", "tests.plugins:Missing"])
def test_bad_task_name_is_a_config_error(name):
    with pytest.raises(ConfigError) as e:
        task_class(name)
    assert e.value.errors[0][0] == "task.name" and name in e.value.errors[0][1]
