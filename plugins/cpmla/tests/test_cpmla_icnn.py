"""The ICNN I_ψ (method reference §1, §5.1): the Gaussian softplus, positive hidden weights,
convexity (Hessian eigenvalues and chords), ActNorm's data-dependent init.

Convexity is checked on G(x) = I(x) + α/2‖x‖² with α = 1e-4 and no other quadratic term,
so any negative curvature of I shows: eigvalsh(∇²G) ≥ α(1 − 1e-9) at 256 random points,
d ∈ {2, 5, 10}, float64, on ICNNs actnorm-initialised on data and then scrambled. The wrong
variant (one hidden layer with negative weights) is caught by both checks.
"""

from __future__ import annotations

import pytest
import torch
from cpflow_fixtures import (
    ALPHA,
    F64,
    make_one_weight_negative,
    scrambled_icnn,
    smallest_hessian_eigenvalue,
    worst_chord_gap,
)

from ebmkit_cpmla.icnn import ICNN, gaussian_softplus, symmetric_gaussian_softplus


def quadratic_floor(net: ICNN):  # noqa: ANN201
    return lambda x: net(x) + 0.5 * ALPHA * x.square().sum(1)


def random_points(dim: int, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 2.5 * torch.randn(n, dim, generator=generator, dtype=F64) + 0.5


def short_chords(dim: int, n: int, seed: int, length: float = 0.7) -> tuple:
    """n segments of `length` at random points (short chords see local curvature)."""
    start = random_points(dim, n, seed)
    direction = torch.randn(
        start.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=F64
    )
    return start, start + length * direction / direction.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------
# The activation


def test_cpmla_gaussian_softplus_is_zero_at_zero_nondecreasing_and_convex() -> None:
    t = torch.linspace(-12.0, 12.0, 2001, dtype=F64, requires_grad=True)
    s = gaussian_softplus(t)
    first = torch.autograd.grad(s.sum(), t, create_graph=True)[0]
    second = torch.autograd.grad(first.sum(), t)[0]
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), 1.0)
    assert gaussian_softplus(torch.zeros(1, dtype=F64)).item() == 0.0
    assert torch.allclose(first, torch.special.ndtr(t.detach()), atol=1e-14)  # s′ = Φ
    assert torch.allclose(second, normal.log_prob(t.detach()).exp(), atol=1e-14)  # s″ = φ
    assert bool((first >= -1e-30).all()) and bool((second >= 0).all())  # −5e-45 by rounding
    # s(t) → t for large t, → −φ(0) for very negative t
    assert abs(s[-1].item() - (12.0 - 0.3989422804014327)) < 1e-12
    assert abs(s[0].item() + 0.3989422804014327) < 1e-12


def test_cpmla_symmetric_gaussian_softplus_is_even_and_convex() -> None:
    t = torch.linspace(-6.0, 6.0, 601, dtype=F64, requires_grad=True)
    s = symmetric_gaussian_softplus(t)
    assert torch.allclose(s, symmetric_gaussian_softplus(-t), atol=1e-14)
    first = torch.autograd.grad(s.sum(), t, create_graph=True)[0]
    second = torch.autograd.grad(first.sum(), t)[0]
    assert bool((second > 0).all())


# --------------------------------------------------------------------------------------
# Positive weights and convexity


def test_cpmla_icnn_hidden_path_weights_are_positive_even_after_scrambling() -> None:
    net = scrambled_icnn(5, seed=1)
    with torch.no_grad():
        for layer in (*net.hidden_weights, net.output_weight):
            layer.raw_weight.sub_(20.0)  # softplus(−20) ≈ 2e-9: still positive
    weights = net.positive_weights()
    assert len(weights) == net.depth
    assert all(bool((weight > 0).all()) for weight in weights)
    make_one_weight_negative(net)
    assert not all(bool((weight > 0).all()) for weight in net.positive_weights())


@pytest.mark.parametrize("dim", [2, 5, 10])
def test_cpmla_icnn_hessian_eigenvalues_are_at_least_the_floor(dim: int) -> None:
    for seed in range(3):
        net = scrambled_icnn(dim, seed=seed)
        smallest = smallest_hessian_eigenvalue(quadratic_floor(net), random_points(dim, 256, seed))
        assert smallest >= ALPHA * (1 - 1e-9), (seed, smallest)


@pytest.mark.parametrize("dim", [2, 5, 10])
def test_cpmla_icnn_convexity_check_finds_a_negative_hidden_weight(dim: int) -> None:
    # the inner layer feeding the output negated: smallest eigenvalue −0.003 to −0.07 seen
    for seed in range(3):
        net = scrambled_icnn(dim, seed=seed)
        make_one_weight_negative(net, layer=1)
        smallest = smallest_hessian_eigenvalue(quadratic_floor(net), random_points(dim, 256, 0))
        assert smallest < -1e-3, (seed, smallest)


@pytest.mark.parametrize("dim", [2, 5, 10])
def test_cpmla_icnn_lies_below_its_chords(dim: int) -> None:
    for seed in range(3):
        net = scrambled_icnn(dim, seed=seed, depth=4)
        a, b = short_chords(dim, 2048, 10)
        assert worst_chord_gap(quadratic_floor(net), a, b, ALPHA) <= 1e-10


@pytest.mark.parametrize("dim", [2, 5, 10])
def test_cpmla_chord_check_finds_a_negative_hidden_weight(dim: int) -> None:
    # the last inner layer negated: the largest gap above the chord is 4e-4 to 0.015
    for seed in range(3):
        net = scrambled_icnn(dim, seed=seed, depth=4)
        make_one_weight_negative(net, layer=2)
        a, b = short_chords(dim, 2048, 10)
        assert worst_chord_gap(quadratic_floor(net), a, b, ALPHA) > 1e-4


def test_cpmla_icnn_with_symmetric_first_activation_is_convex() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ICNN(dim=4, hidden=16, depth=3, symm_act_first=True).to(F64)
    smallest = smallest_hessian_eigenvalue(quadratic_floor(net), random_points(4, 256, 0))
    assert smallest >= ALPHA * (1 - 1e-9)


# --------------------------------------------------------------------------------------
# ActNorm's data-dependent init


def test_cpmla_icnn_actnorm_initialises_on_data_only_and_saves_its_flag() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ICNN(dim=3, hidden=8, depth=3).to(F64)
    before = {name: value.clone() for name, value in net.state_dict().items()}
    net(torch.randn(64, 3, dtype=F64) * 5.0)  # forward never initialises
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert "initialized" in net.state_dict() and not bool(net.initialized)

    data = torch.randn(512, 3, dtype=F64) * torch.tensor([1.0, 3.0, 0.2], dtype=F64) + 2.0
    net.initialize(data)
    assert bool(net.initialized)
    seen = []
    hooks = [
        actnorm.register_forward_hook(lambda module, inputs, output: seen.append(output))
        for actnorm in (*net.actnorms, net.output_actnorm)
    ]
    net(data)
    for hook in hooks:
        hook.remove()
    for output in seen:  # each actnorm's output is standardised on the init batch
        assert torch.allclose(output.mean(0), torch.zeros(output.shape[1], dtype=F64), atol=1e-9)
        assert torch.allclose(output.std(0, unbiased=False), torch.ones(1, dtype=F64), atol=1e-6)
    assert not net.output_actnorm.bias.requires_grad

    copy = ICNN(dim=3, hidden=8, depth=3).to(F64)
    copy.load_state_dict(net.state_dict())
    assert bool(copy.initialized)
    assert torch.equal(copy(data), net(data))


def test_cpmla_icnn_rejects_bad_settings_and_a_bad_init_batch() -> None:
    with pytest.raises(ValueError, match="hidden must be even"):
        ICNN(dim=2, hidden=7)
    with pytest.raises(ValueError, match="depth must be >= 1"):
        ICNN(dim=2, depth=0)
    with pytest.raises(ValueError, match=r"shape \(B >= 2, 2\)"):
        ICNN(dim=2).initialize(torch.zeros(4, 3))
