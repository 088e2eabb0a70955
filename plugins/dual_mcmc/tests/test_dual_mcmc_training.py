"""Dual-MCMC training plumbing (method reference §8 T4), the update-order permutation of the
paper preset (§4), and divergences that name the network that produced them.

Tiny MLP nets on 2-D data, `trainers.Contrastive` with `initializers.Generator` (the paper
preset) and `trainers.DualMCMC` (the reference code's order), every run seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from ebmkit import DivergenceError
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.samplers.langevin import Langevin
from ebmkit.trainers.contrastive import Contrastive, RoundWork
from ebmkit_dual_mcmc.initializer import Generator
from ebmkit_dual_mcmc.networks import GeneratorMLP, InferenceMLP
from ebmkit_dual_mcmc.trainer import DualMCMC


class PoisonableGenerator(GeneratorMLP):
    """A generator whose output turns NaN once `poisoned` is set."""

    poisoned = False

    def forward(self, z: Tensor) -> Tensor:
        x = super().forward(z)
        return torch.full_like(x, float("nan")) if self.poisoned else x


class PoisonableInference(InferenceMLP):
    """An inference model whose log-variance turns NaN once `poisoned` is set."""

    poisoned = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_var = super().forward(x)
        return mean, torch.full_like(log_var, float("nan")) if self.poisoned else log_var


class PoisonAfterRound:
    """A run observer that sets `network.poisoned` after round `round_index`."""

    def __init__(self, network: nn.Module, round_index: int = 1) -> None:
        self.network, self.round_index = network, round_index

    def before_fit(self, trainer: Any) -> None: ...

    def after_round(self, trainer: Any, round: Any) -> None:
        if round.index >= self.round_index:
            self.network.poisoned = True

    def after_fit(self, trainer: Any) -> None: ...


def build(
    trainer: type[Contrastive] = Contrastive,
    *,
    spectral_norm: bool = False,
    energy_revision_stats: bool = True,
    generator: type[GeneratorMLP] = GeneratorMLP,
    inference: type[InferenceMLP] = InferenceMLP,
    **settings: Any,
) -> Contrastive:
    """A tiny Dual-MCMC setup (d = 2, 2-D data, batch 32, 5 rounds), built under seed 0."""
    torch.manual_seed(0)
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(1)) * 0.5 + 1.0
    initializer = Generator(
        generator=generator(latent_dim=2, output_shape=(2,), hidden=(16,)),
        inference=inference(input_shape=(2,), latent_dim=2, hidden=(16,)),
        sigma=0.3,
        posterior_sampler=Langevin(step_size=0.005, n_steps=5),
        learning_rate_generator=1e-3,
        learning_rate_inference=1e-3,
        energy_revision_stats=energy_revision_stats,
    )
    return trainer(
        energy=MLPEnergy(in_features=2, hidden=(16, 16), spectral_norm=spectral_norm),
        sampler=Langevin(step_size=0.01, n_steps=5),
        initializer=initializer,
        dataset=data,
        batch_size=32,
        n_rounds=5,
        learning_rate=1e-3,
        **settings,
    )


def output_bias_index(trainer: Contrastive) -> int:
    """Where the energy's output bias sits among its parameters: L_E = mean E(data) −
    mean E(x̃) does not see a constant shift, so its gradient there is exactly 0."""
    bias = trainer.energy.net[-1].bias
    return next(i for i, p in enumerate(trainer.energy.parameters()) if p is bias)


def parameter_sets(trainer: Contrastive) -> dict[str, list[nn.Parameter]]:
    initializer = trainer.initializer
    return {
        "energy": list(trainer.energy.parameters()),
        "generator": list(initializer.generator.parameters()),
        "inference": list(initializer.inference.parameters()),
    }


def snapshot(trainer: Contrastive) -> dict[str, list[Tensor]]:
    return {
        name: [p.detach().clone() for p in params]
        for name, params in parameter_sets(trainer).items()
    }


def run_until(trainer: Contrastive, last_phase: str) -> RoundWork:
    """Round 1's phases up to and including `last_phase`."""
    work = RoundWork(index=trainer.round_index + 1)
    for name, phase in trainer.phases():
        phase(work)
        if name == last_phase:
            return work
    raise AssertionError(f"no phase {last_phase!r}")


# -- T4: gradient plumbing ---------------------------------------------------------------------


def test_the_generator_is_the_trainers_learnable() -> None:
    trainer = build()
    assert list(trainer.all_learnables.values()) == [trainer.initializer]


def test_each_loss_reaches_only_its_own_parameters() -> None:
    """T4 (a): ∂L_G reaches every generator parameter and nothing else, ∂L_I every inference
    parameter and nothing else, ∂L_E (the trainer's energy loss) every energy parameter and
    nothing else (its output bias with an exact 0: L_E is shift-invariant)."""
    trainer = build()
    work = run_until(trainer, "energy_loss")
    losses = trainer.initializer.loss(work.round)
    torch.testing.assert_close(losses["loss"], losses["generator/loss"] + losses["inference/loss"])
    owned = {"generator": losses["generator/loss"], "inference": losses["inference/loss"]}
    owned["energy"] = work.loss
    for owner, loss in owned.items():
        for name, params in parameter_sets(trainer).items():
            grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
            if name == owner:
                assert all(g is not None for g in grads), f"{owner} loss misses {name} params"
                if owner == "energy":
                    bias = grads[output_bias_index(trainer)]
                    assert torch.equal(bias, torch.zeros_like(bias))
                    grads = [g for g in grads if g is not bias]
                assert all(g.abs().sum() > 0 for g in grads), f"{owner}: a zero gradient"
            else:
                assert all(g is None for g in grads), f"the {owner} loss reaches {name} params"


@pytest.mark.parametrize("learn_order", ["after_energy_step", "before_energy_step"])
def test_one_round_changes_all_three_parameter_sets(learn_order: str) -> None:
    """T4 (b): one `Contrastive` round steps the energy, the generator and the inference
    model: every parameter tensor of each moves (but the energy's output bias, whose gradient
    is exactly 0)."""
    trainer = build(learn_order=learn_order)
    before = snapshot(trainer)
    trainer.train_round()
    after = snapshot(trainer)
    for name in before:
        pairs = enumerate(zip(before[name], after[name], strict=True))
        unchanged = [i for i, (a, b) in pairs if a.equal(b)]
        expected = [output_bias_index(trainer)] if name == "energy" else []
        assert unchanged == expected, f"{name} parameters {unchanged} did not move"


def test_the_revisions_are_detached() -> None:
    """T4 (c): x̃ (the round's chains), z0 ~ q and z̃ (the posterior revision) carry no graph,
    even from a start that requires grad."""
    trainer = build()
    round = trainer.train_round()
    assert round.result.x.grad_fn is None and not round.result.x.requires_grad
    assert round.init.x.grad_fn is None
    initializer = trainer.initializer
    x = round.x_data
    start = initializer.posterior_start(x)
    assert start.grad_fn is None and not start.requires_grad
    start = start.clone().requires_grad_(True)
    revised, stats = initializer.revise_posterior(x, start * 2.0)  # a start on a graph
    assert revised.grad_fn is None and not revised.requires_grad
    assert not torch.equal(revised, (start * 2.0).detach())  # the chains moved
    assert all(value.grad_fn is None for value in stats.values())


def test_the_energy_gradient_is_data_minus_revised_samples() -> None:
    """T4 (d): ∇L_E = mean ∇E(data) − mean ∇E(x̃), the right side summed sample by sample."""
    trainer = build()
    work = run_until(trainer, "energy_loss")
    params = list(trainer.energy.parameters())
    got = torch.autograd.grad(work.loss, params)

    def mean_gradient(x: Tensor) -> list[Tensor]:
        total = [torch.zeros_like(p) for p in params]
        for row in x:
            grads = torch.autograd.grad(trainer.energy(row[None]).sum(), params)
            for acc, g in zip(total, grads, strict=True):
                acc += g / len(x)
        return total

    data, revised = mean_gradient(work.x_data), mean_gradient(work.round.result.x)
    for g, d, r in zip(got, data, revised, strict=True):
        torch.testing.assert_close(g, d - r, rtol=1e-5, atol=1e-7)
    # the check has power: the opposite sign (or the x0 = g(z) negatives) is another gradient
    flipped = [r - d for d, r in zip(data, revised, strict=True)]
    assert any(not torch.allclose(g, f, atol=1e-6) for g, f in zip(got, flipped, strict=True))
    start = mean_gradient(work.init.x)
    from_x0 = [d - s for d, s in zip(data, start, strict=True)]
    assert any(not torch.allclose(g, f, atol=1e-6) for g, f in zip(got, from_x0, strict=True))


# -- the paper preset's update order is irrelevant; the code's order is not --------------------


def trained(make: Callable[[], Contrastive]) -> dict[str, list[Tensor]]:
    trainer = make()
    torch.manual_seed(0)
    trainer.fit()
    assert trainer.round_index == 5
    return snapshot(trainer)


def assert_identical(a: dict[str, list[Tensor]], b: dict[str, list[Tensor]]) -> None:
    for name in a:
        pairs = enumerate(zip(a[name], b[name], strict=True))
        different = [i for i, (x, y) in pairs if not torch.equal(x, y)]
        assert not different, f"{name} parameters {different} differ"


def test_paper_preset_update_order_does_not_change_any_parameter() -> None:
    """§4 paper preset: x̃ and z̃ are drawn once at (α_t, θ_t, φ_t) and the three losses share
    no parameter, so the energy stepping before or after the generator and inference model
    gives bit-identical parameters of all three after 5 rounds; `DualMCMC` without the
    refresh is that same order. The code's order (`DualMCMC`, refresh: the energy learns from
    fresh negatives of the updated generator) gives other energy parameters, so the
    comparison has power."""
    after = trained(lambda: build(learn_order="after_energy_step"))
    before = trained(lambda: build(learn_order="before_energy_step"))
    assert_identical(after, before)
    assert_identical(before, trained(lambda: build(DualMCMC, refresh_negatives=False)))
    code = trained(lambda: build(DualMCMC))
    pairs = enumerate(zip(after["energy"], code["energy"], strict=True))
    changed = [i for i, (x, y) in pairs if not torch.equal(x, y)]
    assert changed, "the refresh did not change the energy's step"


def test_order_irrelevance_with_a_spectral_norm_energy_without_the_energy_drop_stat() -> None:
    """The same with a spectral-norm energy (the paper's energies are SN everywhere), when the
    initializer logs no E(x0) − E(x̃)."""
    after = trained(lambda: build(learn_order="after_energy_step", spectral_norm=True,
                                  energy_revision_stats=False))  # fmt: skip
    before = trained(lambda: build(learn_order="before_energy_step", spectral_norm=True,
                                   energy_revision_stats=False))  # fmt: skip
    assert_identical(after, before)


def test_order_irrelevance_with_a_spectral_norm_energy_and_the_default_stats() -> None:
    """The logged E(x0) − E(x̃) puts the energy's buffers back (`energy_drop`): found as a
    bug, a training-mode forward advanced spectral norm's power iteration before the energy's
    step in one order and after it in the other (parameters 6e-5 apart after 5 rounds)."""
    after = trained(lambda: build(learn_order="after_energy_step", spectral_norm=True))
    before = trained(lambda: build(learn_order="before_energy_step", spectral_norm=True))
    assert_identical(after, before)


# -- divergence names the network --------------------------------------------------------------


def test_a_nan_generator_stops_fit_naming_the_generator() -> None:
    """The generator's samples turn NaN after round 1: `fit` stops in round 2 with a
    DivergenceError naming the generator and its class."""
    trainer = build(generator=PoisonableGenerator)
    with pytest.raises(DivergenceError) as caught:
        trainer.fit(PoisonAfterRound(trainer.initializer.generator))
    message = str(caught.value)
    assert "generator" in message and "PoisonableGenerator" in message
    assert "inference" not in message.split(";")[0]
    assert trainer.round_index == 1


def test_a_nan_generator_weight_stops_train_round_naming_the_generator() -> None:
    """A generator weight set to NaN after round 1: the next `train_round` names it."""
    trainer = build()
    trainer.train_round()
    with torch.no_grad():
        trainer.initializer.generator.net[0].weight[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match="generator GeneratorMLP"):
        trainer.train_round()


@pytest.mark.parametrize("trainer", [Contrastive, DualMCMC])
def test_a_nan_log_variance_stops_fit_naming_the_inference_model(
    trainer: type[Contrastive],
) -> None:
    """q's log-variance turns NaN after round 1: round 2 stops naming the inference model and
    its class (its start z0 ~ q is checked before the posterior revision)."""
    trainer_ = build(trainer, inference=PoisonableInference)
    with pytest.raises(DivergenceError) as caught:
        trainer_.fit(PoisonAfterRound(trainer_.initializer.inference))
    message = str(caught.value)
    assert "inference PoisonableInference" in message and "log-variance" in message
    assert caught.value.round_index == 2


@pytest.mark.parametrize("trainer", [Contrastive, DualMCMC])
def test_a_nan_generator_sample_claims_no_false_round(trainer: type[Contrastive]) -> None:
    """`Generator.sample` (and `regenerate`, the refresh) does not know the round, so its
    divergence says none rather than a wrong one (round_index stays −1)."""
    trainer_ = build(trainer, generator=PoisonableGenerator)
    with pytest.raises(DivergenceError) as caught:
        trainer_.fit(PoisonAfterRound(trainer_.initializer.generator))
    assert "generator PoisonableGenerator gave a non-finite sample" in str(caught.value)
    assert "round" not in caught.value.cause
