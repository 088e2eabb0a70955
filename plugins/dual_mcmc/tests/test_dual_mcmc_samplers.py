"""Any registered sampler serves as the EBM's revision of generator samples, and as the
posterior revision in z (issue 15: Langevin, MALA, STANLEY; the mirror Langevin of issue 14
once it exists)."""

from __future__ import annotations

import pytest
import torch

from ebmkit import MALA, Langevin
from ebmkit.data.toy import EightGaussians
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.energies.tempered import TemperedEnergy
from ebmkit.trainers.contrastive import Contrastive
from ebmkit_dual_mcmc.initializer import Generator
from ebmkit_dual_mcmc.networks import GeneratorMLP, InferenceMLP
from ebmkit_dual_mcmc.trainer import DualMCMC


def stanley() -> object:
    from ebmkit_stanley.kernel import Stanley

    return Stanley(step_size=0.01, n_steps=5)


X_SAMPLERS = {
    "langevin": lambda: Langevin(step_size=0.01, n_steps=5),
    "mala": lambda: MALA(step_size=0.01, n_steps=5),
    "stanley": stanley,
}


def initializer(posterior_sampler: object | None = None) -> Generator:
    return Generator(
        generator=GeneratorMLP(latent_dim=4, hidden=(16,)),
        inference=InferenceMLP(latent_dim=4, hidden=(16,)),
        posterior_sampler=posterior_sampler,
        posterior_steps=3,
    )


@pytest.mark.parametrize("trainer", [Contrastive, DualMCMC])
@pytest.mark.parametrize("name", sorted(X_SAMPLERS))
def test_any_sampler_revises_generator_samples(name: str, trainer: type) -> None:
    torch.manual_seed(0)
    run = trainer(
        energy=MLPEnergy(hidden=(16, 16)),
        sampler=X_SAMPLERS[name](),
        initializer=initializer(),
        dataset=EightGaussians(n_samples=64),
        batch_size=16,
        n_rounds=2,
    )
    before = [p.detach().clone() for p in run.initializer.parameters()]
    round = run.fit().train_round()
    assert all(bool(torch.isfinite(value).all()) for value in round.losses.values())
    assert "initializer/generator/teach" in round.losses
    after = list(run.initializer.parameters())
    changed = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
    assert all(changed)  # the generator and the inference model both learned
    assert round.result.x.shape == (16, 2) and round.init.latents.shape == (16, 4)


def test_mala_revises_the_posterior_and_accepts_on_the_tempered_energy() -> None:
    torch.manual_seed(0)
    mala = MALA(step_size=0.005, n_steps=3)
    run = Contrastive(
        energy=TemperedEnergy(network=MLPEnergy(hidden=(16, 16)), temperature=0.5),
        sampler=MALA(step_size=0.01, n_steps=5),
        initializer=initializer(posterior_sampler=mala),
        dataset=EightGaussians(n_samples=64),
        batch_size=16,
        n_rounds=1,
    )
    round = run.train_round()
    # an untrained q draws far from the posterior: the MALA chains bring U down
    start = round.losses["initializer/posterior/energy_start"]
    end = round.losses["initializer/posterior/energy_end"]
    assert float(end) < float(start)
    assert round.result.acceptance_rate is not None  # MH on E/T
