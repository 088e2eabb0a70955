"""Bad input gives one clear error naming the component and the fix (issue 13, "Bad input"):
a flow whose dimension does not match the data, a non-finite or non-invertible flow output, a
flow with a stochastic density, something that is not a flow, a bad setting."""

from __future__ import annotations

import math

import pytest
import torch
from flow_mcmc_fixtures import F64

from ebmkit import DivergenceError
from ebmkit.flows import Affine, ElementwiseAffine
from ebmkit.samplers.mala import MALA
from ebmkit_flow_mcmc import ISIR, FlowIMH, FlowMCMC, NeutraMCMC

KERNELS = {
    "samplers.FlowIMH": FlowIMH,
    "samplers.ISIR": ISIR,
    "samplers.FlowMCMC": FlowMCMC,
    "samplers.NeutraMCMC": NeutraMCMC,
}


def gaussian(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x.flatten(1).square().sum(1)


@pytest.mark.parametrize("name", list(KERNELS))
def test_a_flow_of_another_dimension_is_refused_naming_the_fix(name: str) -> None:
    sampler = KERNELS[name](flow=Affine(dim=3).freeze())
    with pytest.raises(ValueError) as error:
        sampler.sample(gaussian, torch.zeros(4, 2), 2)
    message = str(error.value)
    assert "flows.Affine" in message and "(3,)" in message and "(2,)" in message
    assert "flows.Affine.dim = 2" in message
    assert name in message


class BrokenInverse(ElementwiseAffine):
    """An affine flow whose inverse overflows to inf on some rows."""

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, logdet = super().inverse(z)
        return torch.where(z[:, :1] > 1.0, math.inf, x), logdet


@pytest.mark.parametrize("name", list(KERNELS))
def test_a_non_finite_flow_output_stops_the_run_naming_the_flow(name: str) -> None:
    flow = BrokenInverse(event_shape=None, loc=0.0, scale=1.0).freeze()
    with_local = name in ("samplers.FlowMCMC", "samplers.NeutraMCMC")
    sampler = KERNELS[name](flow=flow, **({"local": MALA(step_size=0.5)} if with_local else {}))
    start = torch.full((64, 2), 2.0, dtype=F64)  # NeutraMCMC: latents 2 > 1 map to inf
    with pytest.raises(DivergenceError) as error:
        sampler.sample(gaussian, start, 20, generator=torch.Generator().manual_seed(0))
    message = str(error.value)
    assert "flows.BrokenInverse" in message and "non-finite" in message
    assert "learning rate" in message  # the fix


class StochasticDensity(ElementwiseAffine):
    exact_log_prob = False


@pytest.mark.parametrize("name", list(KERNELS))
def test_a_stochastic_density_flow_is_refused(name: str) -> None:
    flow = StochasticDensity(event_shape=None)
    with pytest.raises(ValueError) as error:
        KERNELS[name](flow=flow)
    message = str(error.value)
    assert name in message and "exact_log_prob = False" in message
    assert "flows.RealNVP" in message  # what to use instead


@pytest.mark.parametrize("name", list(KERNELS))
def test_something_that_is_not_a_flow_is_refused(name: str) -> None:
    with pytest.raises(TypeError, match=f"{name}.flow must be a flow"):
        KERNELS[name](flow=torch.nn.Linear(2, 2))


def test_bad_settings_are_refused() -> None:
    flow = ElementwiseAffine(event_shape=None).freeze()
    with pytest.raises(ValueError, match="global_move must be one of"):
        FlowMCMC(flow=flow, global_move="mala")
    with pytest.raises(ValueError, match="local_steps"):
        FlowMCMC(flow=flow, local_steps=0)
    with pytest.raises(ValueError, match="n_particles"):
        ISIR(flow=flow, n_particles=1)
    with pytest.raises(TypeError, match="samplers.FlowMCMC.local must be a sampler"):
        FlowMCMC(flow=flow, local=MALA)


class _Folding(ElementwiseAffine):
    """Not a bijection: its inverse folds x = |loc + scale·z| (forward ignores the fold)."""

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, logdet = super().inverse(z)
        return x.abs(), logdet


def test_a_non_invertible_flow_is_refused_by_neutra_naming_the_flow() -> None:
    folding = _Folding(event_shape=None, loc=0.0, scale=1.0).freeze()
    sampler = NeutraMCMC(flow=folding, local=MALA(step_size=0.1))
    x = torch.linspace(-2, 2, 8).reshape(4, 2)  # negative coordinates do not come back
    with pytest.raises(ValueError, match=r"NeutraMCMC: its flow .* is not invertible") as caught:
        sampler.sample(lambda x: 0.5 * x.square().sum(1), x, 2)
    assert "ebmkit.testing.check_flow_invertible" in str(caught.value)
    assert "inverse_tolerance" in str(caught.value)
    # the same flow on chains where it is invertible (x ≥ 0) passes the check
    sampler.sample(lambda x: 0.5 * x.square().sum(1), x.abs() + 0.5, 2)


def tiny_glow() -> torch.nn.Module:
    """A frozen Glow on (1, 4, 4): its logit pre-processing bounds the support to |x| < 1.11."""
    from ebmkit.flows import Glow

    torch.manual_seed(0)
    return Glow(event_shape=(1, 4, 4), levels=1, steps_per_level=1, hidden_channels=4).freeze()


@pytest.mark.parametrize("name", ["samplers.FlowIMH", "samplers.ISIR"])
def test_chains_outside_a_bounded_flow_support_stay_instead_of_diverging(name: str) -> None:
    # Found running gin/flow_mcmc_cifar10.gin: MALA moved persistent chains past Glow's
    # support, log λ(x) = −inf there, and the kernel stopped the run as if it had diverged.
    flow = tiny_glow()
    start = torch.full((16, 1, 4, 4), 1.5)
    start[8:] = 0.0  # half inside the support
    result = KERNELS[name](flow=flow).sample(
        gaussian, start, 5, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(result.x[:8], start[:8])  # λ(x) = 0: never left by an independence move
    assert not torch.equal(result.x[8:], start[8:])  # the others move
    assert bool(result.acceptance_rate[:8].eq(0).all())
    assert bool(torch.isfinite(result.acceptance_rate).all())


def test_local_moves_go_on_outside_the_support_and_a_tilted_target_leaves_it() -> None:
    flow = tiny_glow()
    start = torch.full((8, 1, 4, 4), 1.5)
    generator = torch.Generator().manual_seed(0)
    untilted = FlowMCMC(flow=flow, local=MALA(step_size=0.01), local_steps=2)
    moved = untilted.sample(gaussian, start, 4, generator=generator).x
    assert not torch.equal(moved, start)  # MALA moved them
    tilted = FlowIMH(flow=flow).sample(
        lambda x: gaussian(x) - flow.log_prob(x), start, 3, generator=generator
    )
    assert torch.equal(tilted.x, start)  # a plain energy −log λ is +inf: stays NaN-free
    from ebmkit_flow_mcmc.densities import TiltedEnergy

    leaves = FlowIMH(flow=flow).sample(TiltedEnergy(gaussian, flow), start, 1, generator=generator)
    assert bool((leaves.x.abs() < 1.12).all())  # λ·exp(−E) is 0 at the start: always accepted
