"""ISIR: the exact test of the method reference (§2.4, item 5) and the kernel's bookkeeping.

i-SIR with N = 4, the off-centre proposal N(1, 3²), 2000 chains started at exact samples of
the 0.2/0.8 mixture, 30 steps: ŵ_small = 0.2 ± 0.03 (standard error 0.009, so 3.4 SE). The
two wrong variants the reference names both leave that band: leaving the current state out
of the candidates (0.31; reference 0.304) and dropping λ from the weights (0.14; reference
0.138).
"""

from __future__ import annotations

import math

import pytest
import torch
from flow_mcmc_fixtures import (
    F64,
    UNBALANCED,
    DensityDropped,
    ISIRWithoutCurrent,
    small_mode_weight,
)

from ebmkit.flows import Affine
from ebmkit_flow_mcmc import ISIR, LOG_PROB, pick_by_weight

OFF_CENTRE = Affine(dim=1, loc=1.0, scale=3.0).freeze()


def isir_weight(sampler) -> float:
    generator = torch.Generator().manual_seed(0)
    x0 = UNBALANCED.sample(2000, generator)
    result = sampler.sample(UNBALANCED.energy, x0, 30, generator=generator)
    return small_mode_weight(result.x)


def test_isir_keeps_the_unbalanced_mixture_invariant() -> None:
    assert abs(isir_weight(ISIR(flow=OFF_CENTRE, n_particles=4)) - 0.2) < 0.03  # 0.2015


@pytest.mark.parametrize(
    ("sampler", "measured"),
    [
        pytest.param(ISIRWithoutCurrent(flow=OFF_CENTRE, n_particles=4), 0.31, id="no-current"),
        pytest.param(ISIR(flow=DensityDropped(OFF_CENTRE), n_particles=4), 0.14, id="no-lambda"),
    ],
)
def test_isir_check_fails_the_wrong_variants(sampler, measured: float) -> None:
    weight = isir_weight(sampler)
    assert abs(weight - 0.2) > 0.03, weight
    assert abs(weight - measured) < 0.03, weight  # measured 0.302 and 0.1425


def test_pick_by_weight_draws_in_proportion_to_the_weights() -> None:
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    log_weights = weights.log().expand(20000, 4)
    index = pick_by_weight(log_weights, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(index, minlength=4).to(F64) / 20000
    standard_error = (weights * (1 - weights) / 20000).sqrt()
    assert ((frequencies - weights).abs() < 5 * standard_error).all(), frequencies


def test_pick_by_weight_never_picks_nan_or_minus_infinity() -> None:
    log_weights = torch.tensor([[math.nan, 0.0, -math.inf]]).expand(1000, 3)
    index = pick_by_weight(log_weights, torch.Generator().manual_seed(0))
    assert (index == 1).all()


def test_caches_costs_and_acceptance() -> None:
    generator = torch.Generator().manual_seed(0)
    x0 = UNBALANCED.sample(300, generator)
    result = ISIR(flow=OFF_CENTRE, n_particles=5).sample(
        UNBALANCED.energy, x0, 3, generator=generator
    )
    state = result.state
    torch.testing.assert_close(state.energy, UNBALANCED.energy(state.x), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        state.extras[LOG_PROB], OFF_CENTRE.log_prob(state.x), rtol=0, atol=1e-12
    )
    # init 1 + 3 steps × (N − 1) = 4 energy-only evaluations and flow passes each
    assert (result.n_grad_evals, result.n_energy_evals, result.n_flow_evals) == (0, 13, 13)
    rate = result.acceptance_rate
    assert rate.shape == (300,) and bool(((rate >= 0) & (rate <= 1)).all())


def test_isir_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    x0 = torch.zeros(50, 1, dtype=F64)
    before = torch.get_rng_state()
    runs = [
        ISIR(flow=OFF_CENTRE).sample(
            UNBALANCED.energy, x0, 5, generator=torch.Generator().manual_seed(3)
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0].x, runs[1].x)
    assert torch.equal(torch.get_rng_state(), before)
