"""Hard-concrete gates against closed forms (Louizos et al. 2018, beta=2/3, gamma=-0.1, zeta=1.1)."""

import math

import pytest
import torch

from trainables.hard_concrete import BETA, HardConcreteGate


def gate_with(log_alpha: list[float]) -> HardConcreteGate:
    g = HardConcreteGate(len(log_alpha))
    with torch.no_grad():
        g.log_alpha.copy_(torch.tensor(log_alpha))
    return g


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_init_keep_sets_log_alpha():
    g = HardConcreteGate((3, 4), init_keep=0.9)
    assert g.log_alpha.shape == (3, 4)
    assert torch.allclose(torch.sigmoid(g.log_alpha), torch.full((3, 4), 0.9))
    assert torch.allclose(g.deterministic(), torch.full((3, 4), 0.98))  # 0.9 * 1.2 - 0.1
    assert g.density() == 1.0
    with pytest.raises(ValueError):
        HardConcreteGate(3, init_keep=1.0)


def test_deterministic_gate_known_values():
    # sigmoid(-3)*1.2-0.1 < 0 -> 0; sigmoid(0)*1.2-0.1 = 0.5; sigmoid(3)*1.2-0.1 > 1 -> 1;
    # sigmoid(log 11)=11/12 -> exactly 1 (the boundary); sigmoid(log(2/10)) = 1/6 -> 0.1
    g = gate_with([-3.0, 0.0, 3.0, math.log(11.0), math.log(0.2)])
    z = g.deterministic()
    assert z.tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.1], abs=1e-6)
    assert z[0].item() == 0.0 and z[2].item() == 1.0  # exactly, not approximately
    assert g.density() == pytest.approx(4 / 5)
    g.eval()
    assert torch.equal(g(), z)  # eval mode = deterministic


def test_expected_l0_closed_form():
    # P(z > 0) = sigmoid(log_alpha - beta*log(1/11)) = sigmoid(log_alpha + (2/3) log 11)
    g = gate_with([BETA * math.log(1 / 11), 0.0])  # first: exactly 0.5
    expect = [0.5, 1.0 / (1.0 + 11.0 ** (-2.0 / 3.0))]  # 0.5, 0.8318
    assert g.expected_l0().item() == pytest.approx(sum(expect) / 2, abs=1e-6)
    assert expect[1] == pytest.approx(0.8318, abs=1e-4)


def test_samples_match_closed_form_probabilities():
    torch.manual_seed(0)
    n = 200_000
    la = 0.7
    g = gate_with([la] * n)
    g.train()
    z = g()
    assert z.shape == (n,) and z.min().item() == 0.0 and z.max().item() == 1.0
    p_open = sigmoid(la + BETA * math.log(11.0))  # P(z > 0)
    p_one = sigmoid(la - BETA * math.log(11.0))  # P(z = 1): s >= 11/12
    # binomial std at n=2e5 is <= 0.0012; tolerance 0.005 is > 4 std
    assert (z > 0).float().mean().item() == pytest.approx(p_open, abs=5e-3)
    assert (z == 1).float().mean().item() == pytest.approx(p_one, abs=5e-3)
    assert g.expected_l0().item() == pytest.approx(p_open, abs=1e-6)


def test_gradients_flow_to_log_alpha():
    torch.manual_seed(1)
    g = HardConcreteGate(1000, init_keep=0.5)
    g.train()
    z = g()
    z.sum().backward()
    grad = g.log_alpha.grad
    inside = (z > 0) & (z < 1)
    assert inside.any() and (~inside).any()
    assert (grad[inside] > 0).all() and (grad[~inside] == 0).all()  # rectified gates pass no gradient
    g.log_alpha.grad = None
    g.expected_l0().backward()
    p = sigmoid(BETA * math.log(11.0))  # log_alpha = 0
    assert torch.allclose(g.log_alpha.grad, torch.full((1000,), p * (1 - p) / 1000))
