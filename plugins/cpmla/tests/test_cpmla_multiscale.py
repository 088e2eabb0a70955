"""`flows.CPFlowImage`: the multi-scale CP-Flow for images (flow contract at (1, 4, 4), the
paper's parameter count, block convexity, the stochastic training loss, the composite mirror's
Jacobian-diagonal heuristic and MirrorLangevin's refusals)."""

from __future__ import annotations

import pytest
import torch

import ebmkit
from ebmkit.testing import (
    check_flow_invertible,
    check_flow_logdet,
    check_flow_sampling_reproducible,
    check_flow_save_load,
    flow_round,
)
from ebmkit_cpmla.mirror_langevin import MirrorLangevin
from ebmkit_cpmla.multiscale import CPFlowImage, PositiveConv2d
from ebmkit_cpmla.solve import potential_hessian

F64 = torch.float64


@pytest.fixture(scope="module")
def case() -> CPFlowImage:
    return CPFlowImage.testing_cases()[0]


def test_registered_by_name() -> None:
    assert "CPFlowImage" in {component.name for component in ebmkit.components("flow")}
    flow = CPFlowImage(event_shape=(3, 4, 4), hidden=8)
    assert flow.single_block is False and flow.exact_log_prob is False


def test_the_paper_size_has_about_026m_parameters() -> None:
    flow = CPFlowImage(event_shape=(3, 32, 32))
    count = sum(parameter.numel() for parameter in flow.parameters())
    print(f"CPFlowImage at (3, 32, 32): {count} parameters")
    assert count == 256_186  # the paper: 0.26M
    assert len(flow.blocks) == 4 and flow.scale_of == [0, 0, 1, 1]


def test_flow_contract_at_a_tiny_shape(case: CPFlowImage) -> None:
    assert check_flow_invertible(case) < 1e-6
    assert check_flow_logdet(case) < 1e-6
    check_flow_save_load(case)
    check_flow_sampling_reproducible(case)


def test_positive_conv_weights_and_block_hessians_above_alpha(case: CPFlowImage) -> None:
    layer = PositiveConv2d(4, 2)
    assert bool((layer.positive_weight() > 0).all())
    generator = torch.Generator().manual_seed(1)
    for block in case.blocks:
        x = torch.randn(6, *block.event_shape, generator=generator, dtype=F64)
        hessian = potential_hessian(block.potential, x)
        assert torch.allclose(hessian, hessian.mT, atol=1e-10)
        assert float(torch.linalg.eigvalsh(hessian).min()) >= case.alpha


def test_stochastic_loss_trains_and_the_init_flag_is_saved() -> None:
    torch.manual_seed(0)
    flow = CPFlowImage(event_shape=(3, 8, 8), blocks_per_scale=2, hidden=8, learning_rate=1e-3)
    data = torch.rand(8, 3, 8, 8) * 2 - 1
    assert not bool(flow.initialized)
    before = [p.detach().clone() for p in flow.parameters()]
    losses = flow.learn(flow_round(data))
    assert bool(flow.initialized) and "initialized" in dict(flow.named_buffers())
    assert torch.isfinite(losses["loss"]) and losses["cg_iterations"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, flow.parameters(), strict=True))
    with torch.no_grad():
        z, log_det = flow(data)
        x_back = flow.inverse(z).x
    assert z.shape == data.shape and log_det.shape == (8,)
    assert float((x_back - data).abs().max()) < 1e-3


def test_lanczos_log_det_is_exact_with_d_steps(case: CPFlowImage) -> None:
    stochastic = CPFlowImage.testing_cases()[0]
    stochastic.logdet, stochastic.lanczos_steps, stochastic.n_probes = "stochastic", 16, 4
    x = torch.randn(3, 1, 4, 4, dtype=F64)
    with torch.no_grad():
        exact = case(x)[1]
        estimate = stochastic(x)[1]
    # m = D Lanczos steps: each probe gives d·v̂ᵀ log H v̂ exactly; the rest is Hutchinson noise
    assert float((estimate - exact).abs().max()) < 0.5


def test_the_composite_jacobian_and_its_diagonal_heuristic(case: CPFlowImage) -> None:
    x = torch.randn(2, 1, 4, 4, dtype=F64)
    jacobian = torch.autograd.functional.jacobian(
        lambda v: case.grad(v.reshape(1, 1, 4, 4), create_graph=True)[0].flatten(), x[0].flatten()
    )
    assert torch.allclose(case.hessian(x)[0], jacobian, atol=1e-10)
    assert not torch.allclose(jacobian, jacobian.T, atol=1e-3)  # not one convex potential
    generator = torch.Generator().manual_seed(3)
    diagonal = case.hessian_diagonal(x, generator=generator)
    probe = 2 * torch.randint(0, 2, (1, *x.shape), generator=torch.Generator().manual_seed(3)) - 1
    probe = probe[0].to(F64)
    expected = probe * (case.hessian(x) @ probe.flatten(1).unsqueeze(-1)).reshape(x.shape)
    assert torch.allclose(diagonal, expected.clamp(min=case.alpha), atol=1e-10)
    assert bool((diagonal >= case.alpha).all())


def test_mirror_langevin_refuses_exact_noise_and_runs_the_diagonal_one(case: CPFlowImage) -> None:
    with pytest.raises(ValueError, match="single_block=False"):
        MirrorLangevin(mirror=case, step_size=1e-2, noise="exact")
    with pytest.raises(ValueError, match="single_block=False"):
        MirrorLangevin(mirror=case, step_size=1e-2, noise="diagonal", metropolis=True)
    with pytest.raises(NotImplementedError, match="not the gradient of one convex"):
        case.potential(torch.zeros(1, 1, 4, 4, dtype=F64))
    sampler = MirrorLangevin(mirror=case, step_size=1e-2, noise="diagonal", n_steps=5)
    start = case.sample(6, generator=torch.Generator().manual_seed(0))
    result = sampler.sample(lambda x: 0.5 * x.flatten(1).square().sum(1), start)
    assert result.x.shape == start.shape and bool(torch.isfinite(result.x).all())
    assert float(result.stats["solve/iterations"]) > 0
    assert float(result.stats["solve/residual"]) <= case.tolerance


@pytest.mark.parametrize("exact_limit", [64, 0], ids=["dense", "normal-equations-cg"])
def test_cpmla_implicit_gradient_through_a_composite_mirror_is_the_transpose_solve(
    exact_limit: int,
) -> None:
    """∂x/∂y of x = T⁻¹(y) for stacked blocks is J⁻¹, so the backward is J⁻ᵀg: checked
    against autograd's Jacobian of the flow's own differentiable inverse. Found as a bug: the
    backward solved with J itself (right only for one symmetric Hessian)."""
    from ebmkit_cpmla.mirror_langevin import solve_with_hessian

    (flow,) = CPFlowImage.testing_cases()
    torch.manual_seed(1)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 1.2 - 0.3
    g = torch.randn_like(x)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow.grad(v[None], True)[0], x[0])
    jacobian = jacobian.reshape(16, 16)
    expected = torch.linalg.solve(jacobian.T, g[0].reshape(16))
    got = solve_with_hessian(flow, x, g, exact_limit=exact_limit)
    assert torch.allclose(got[0].reshape(16), expected, atol=1e-7, rtol=1e-6)
    wrong = torch.linalg.solve(jacobian, g[0].reshape(16))
    assert (wrong - expected).abs().max() > 1e-3  # the old backward was measurably off
