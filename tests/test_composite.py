"""samplers.Composite: its stages' `init`, per-stage repeats, honest costs, states without ∇E."""

from __future__ import annotations

import torch

from ebmkit.energies.mlp import MLPEnergy
from ebmkit.initializers.noise import Noise
from ebmkit.initializers.persistent import Persistent
from ebmkit.samplers.composite import Composite
from ebmkit.samplers.langevin import Langevin
from ebmkit.samplers.mala import MALA
from ebmkit.testing import finished_round


def small_energy(seed: int = 0) -> MLPEnergy:
    torch.manual_seed(seed)
    return MLPEnergy(hidden=(16, 16))


def ula_then_mala() -> Composite:
    return Composite(stages={"ula": Langevin(step_size=0.01), "mala": MALA(step_size=0.05)})


def test_chains_a_bank_has_not_run_yet_get_each_stages_configured_step_size_and_move():
    """Bank of 8 drawn 4 at a time: chains 4-7 arrive with ``mala/step_size`` NaN ("not set
    yet"); each stage's `init` resolves it, so they move as chains 0-3 did in their first round.
    (Before the fix: NaN step sizes, acceptance 0 in every round, the chains never moved.)"""
    energy = small_energy()
    sampler = ula_then_mala()
    bank = Persistent(n_chains=8, start=Noise(shape=(2,), low=-2, high=2), shuffle=False)
    generator = torch.Generator().manual_seed(0)
    acceptance = {}
    for index in range(1, 5):
        init = bank.sample(4)
        result = sampler.sample(energy, init, 10, generator=generator)
        bank.update(finished_round(index, init, result))
        acceptance[index] = result.stats["mala/acceptance"]
        if index == 2:  # chains 4-7, first run: they started from "not set" entries
            assert torch.equal(init.indices, torch.arange(4, 8))
            assert init.state.owned["mala/step_size"].isnan().all()
            assert torch.equal(result.state.owned["mala/step_size"], torch.full((4,), 0.05))
            assert not torch.equal(result.x, init.x), "chains 4-7 never moved"
    assert bank.owned["mala/step_size"].isfinite().all()
    for index, rate in acceptance.items():
        assert rate.isfinite().all() and (rate > 0).all(), (index, rate)
