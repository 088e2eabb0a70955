"""initializers.Flow: chains start at flow samples (latents kept), a non-finite flow stops the
round naming it, a flow shared with a sampler is trained and saved once, and a run with a
RealNVP start resumes bit for bit."""

from __future__ import annotations

import io

import attrs
import pytest
import torch

import ebmkit
from ebmkit.checkpoint.rng import get_rng_state, seed_everything, set_rng_state
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.flows import ElementwiseAffine, RealNVP
from ebmkit.initializers.flow import Flow
from ebmkit.samplers.langevin import Langevin
from ebmkit.trainers.contrastive import Contrastive


def test_chains_start_at_flow_samples_with_their_latents() -> None:
    torch.manual_seed(0)
    flow = RealNVP(dim=2, hidden_features=(16,), init_scale=1.0)  # far from the identity
    batch = Flow(flow=flow).sample(16)
    assert batch.x.shape == batch.latents.shape == (16, 2)
    with torch.no_grad():
        x, _ = flow.inverse(batch.latents)
    assert torch.equal(batch.x, x)
    assert not torch.allclose(batch.x, batch.latents, atol=1e-2)
    assert not batch.x.requires_grad


def test_flow_starts_come_from_the_global_rng_a_checkpoint_saves() -> None:
    flow = ElementwiseAffine(event_shape=(3,), loc=2.0)
    torch.manual_seed(5)
    first = Flow(flow=flow).sample(4)
    torch.manual_seed(5)
    assert torch.equal(Flow(flow=flow).sample(4).x, first.x)


def test_a_non_finite_flow_sample_raises_a_divergence_error_naming_the_flow() -> None:
    flow = ElementwiseAffine(event_shape=(2,))
    with torch.no_grad():
        flow.log_scale.fill_(1000.0)  # exp overflows: inf samples
    with pytest.raises(ebmkit.DivergenceError) as caught:
        Flow(flow=flow).sample(8)
    message = str(caught.value)
    assert "initializers.Flow (flows.ElementwiseAffine) gave a non-finite sample" in message
    assert "grad_clip" in message


def test_initializers_flow_refuses_what_is_not_a_flow() -> None:
    with pytest.raises(TypeError, match=r"initializers.Flow.flow must be a flow .*flows.RealNVP"):
        Flow(flow=torch.nn.Linear(2, 2))


@attrs.define(kw_only=True)
class FlowLangevin(Langevin):
    """Langevin holding a flow (as a flow-MCMC or mirror kernel would): the flow is shared."""

    flow: object = None


def _shared_trainer(flow: RealNVP, n_rounds: int = 2) -> Contrastive:
    return Contrastive(
        energy=MLPEnergy(hidden=(8, 8)),
        sampler=FlowLangevin(step_size=0.01, n_steps=2, flow=flow),
        initializer=Flow(flow=flow),
        dataset=ebmkit.create("dataset", "EightGaussians", n_samples=64, seed=0),
        batch_size=16,
        n_rounds=n_rounds,
    )


def test_a_flow_shared_by_initializer_and_sampler_is_trained_once_and_saved_once() -> None:
    seed_everything(0)
    flow = RealNVP(dim=2, hidden_features=(8,), fit_on="samples")
    trainer = _shared_trainer(flow)
    assert trainer.all_learnables == {"initializer.flow": flow}
    calls = []
    learn = flow.learn
    flow.learn = lambda round: calls.append(round.index) or learn(round)  # type: ignore[method-assign]
    trainer.fit()
    assert calls == [1, 2]
    steps = {float(state["step"]) for state in flow.optimizer.state.values()}
    assert steps == {2.0}  # every parameter stepped once per round
    state = trainer.state_dict()
    assert list(state["learnables"]) == ["initializer.flow"]
    assert "sampler" not in state["components"] and "initializer" not in state["components"]


def _run(trainer: Contrastive, rounds: int) -> None:
    trainer.n_rounds = trainer.round_index + rounds
    trainer.fit()


def _realnvp_trainer(seed: int) -> Contrastive:
    seed_everything(seed)
    return Contrastive(
        energy=MLPEnergy(hidden=(16, 16)),
        sampler=Langevin(step_size=0.01, n_steps=3),
        initializer=Flow(flow=RealNVP(dim=2, hidden_features=(16,), fit_on="samples")),
        dataset=ebmkit.create("dataset", "EightGaussians", n_samples=96, seed=0),
        batch_size=32,
        n_rounds=3,
    )


def _through_disk(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_run_started_from_a_realnvp_resumes_bit_identically() -> None:
    straight = _realnvp_trainer(0)
    _run(straight, 3)
    rng_straight = torch.get_rng_state()
    flow = straight.initializer.flow
    assert flow.optimizer.state  # the flow learned

    first = _realnvp_trainer(0)
    _run(first, 1)
    saved = _through_disk({"trainer": first.state_dict(), "rng": get_rng_state()})
    resumed = _realnvp_trainer(123)  # other initial weights: all must come from the checkpoint
    resumed.load_state_dict(saved["trainer"])
    set_rng_state(saved["rng"])
    _run(resumed, 2)
    assert torch.equal(torch.get_rng_state(), rng_straight)  # the same draws, in order

    assert resumed.round_index == straight.round_index == 3
    expected, got = straight.state_dict(), resumed.state_dict()
    for name, value in expected["energy"].items():
        assert torch.equal(value, got["energy"][name]), name
    flow_expected = expected["learnables"]["initializer.flow"]
    flow_got = got["learnables"]["initializer.flow"]
    for name, value in flow_expected["module"].items():
        assert torch.equal(value, flow_got["module"][name]), name
    for index, state in flow_expected["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, flow_got["optimizer"]["state"][index][key]), (index, key)
