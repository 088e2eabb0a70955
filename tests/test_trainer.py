"""The contrastive trainer learns eight Gaussians; its round record and learnable discovery."""

from types import SimpleNamespace

import attrs
import pytest
import torch

from ebmkit.checkpoint.rng import seed_everything
from ebmkit.data.toy import EightGaussians
from ebmkit.density import Tempered, model_energy_of
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.initializers.noise import Noise
from ebmkit.initializers.replay import Replay
from ebmkit.metrics.toy import grid_kl, toy_metrics
from ebmkit.runs.observer import RunObserver
from ebmkit.samplers.langevin import Langevin
from ebmkit.trainers.contrastive import Contrastive


def _trainer(seed: int, n_rounds: int, **overrides) -> Contrastive:
    seed_everything(seed)
    data = EightGaussians(n_samples=5000, seed=seed)
    settings = dict(
        energy=MLPEnergy(hidden=(64, 64, 64)),
        sampler=Langevin(step_size=0.01, n_steps=20),
        initializer=Replay(noise=Noise(shape=(2,), low=-3, high=3), capacity=5000),
        dataset=data,
        batch_size=128,
        n_rounds=n_rounds,
        learning_rate=3e-3,
        alpha=0.03,
        seed=seed,
    )
    return Contrastive(**{**settings, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_training_on_eight_gaussians_brings_grid_kl_under_measured_threshold(seed):
    # Measured (CPU, seeds 0-3): grid KL 2.46 at initialisation, 0.94-0.98 after 600 rounds.
    trainer = _trainer(seed, n_rounds=600)
    before = grid_kl(trainer.energy, trainer.dataset, resolution=100)
    trainer.fit()
    after = grid_kl(trainer.energy, trainer.dataset, resolution=100)
    assert before > 2.0
    assert after < 1.2, after


def test_round_record_and_loss():
    trainer = _trainer(0, n_rounds=1, alpha=0.5)
    round = trainer.train_round()
    assert round.index == 1 and trainer.round_index == 1
    assert round.x_data.shape == (128, 2) and round.result.x.shape == (128, 2)
    expected_regulariser = 0.5 * (round.energy_data.square() + round.energy_model.square()).mean()
    torch.testing.assert_close(round.losses["loss/regulariser"], expected_regulariser)
    torch.testing.assert_close(
        round.losses["loss/contrastive"], round.energy_data.mean() - round.energy_model.mean()
    )
    torch.testing.assert_close(round.energy_gap, -round.losses["loss/contrastive"])
    # The replay buffer received the round's final states.
    buffer = trainer.initializer.buffer
    assert torch.equal(buffer[round.init.indices[-1]], round.result.x[-1])


@attrs.define
class _CountingLearnable:
    calls: int = 0

    def learn(self, round):
        self.calls += 1
        return {"loss": torch.tensor(float(self.calls))}

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_a_learnable_shared_by_two_components_learns_once_per_round():
    shared = _CountingLearnable()
    trainer = _trainer(0, n_rounds=2, learnables=(shared, shared))
    trainer.fit()
    assert shared.calls == 2
    assert list(trainer.all_learnables) == ["learnables.0"]
    assert trainer.state_dict()["learnables"] == {"learnables.0": {"calls": 2}}


def test_sampler_chains_do_not_touch_parameter_gradients():
    trainer = _trainer(0, n_rounds=1)
    x = torch.randn(16, 2)
    trainer.sampler.sample(trainer.energy, x, 5)
    assert all(p.grad is None for p in trainer.energy.parameters())


# ---------------------------------------------------------------- the model-density hook


class _TargetSampler(Langevin):
    """Langevin declaring that the chains target the data's exact density (not exp(-E))."""

    def model_energy(self, energy):
        return lambda x: -self.target.log_density(x).to(x.dtype)


class _TargetInitializer(Noise):
    """A noise start declaring the energy shifted by 1 (a density the same as exp(-E))."""

    def model_energy(self, energy):
        return lambda x: energy(x) + 1.0


def _declaring_trainer(**overrides) -> Contrastive:
    sampler = _TargetSampler(step_size=0.01, n_steps=2)
    trainer = _trainer(0, n_rounds=1, sampler=sampler, batch_size=16, **overrides)
    object.__setattr__(sampler, "target", trainer.dataset)  # frozen attrs record
    return trainer


def test_the_model_energy_is_the_energy_itself_by_default():
    trainer = _trainer(0, n_rounds=1)
    assert trainer.model_energy() is trainer.energy
    assert model_energy_of(trainer) is trainer.energy


def test_model_energy_precedence_is_binding_then_sampler_then_initializer():
    noise = _TargetInitializer(shape=(2,), low=-3, high=3)
    trainer = _declaring_trainer(initializer=noise)
    x = trainer.dataset.sample(5)
    exact = -trainer.dataset.log_density(x).float()
    with torch.no_grad():
        torch.testing.assert_close(trainer.model_energy()(x), exact)  # the sampler's
        trainer.sampler = Langevin(step_size=0.01, n_steps=2)
        torch.testing.assert_close(trainer.model_energy()(x), trainer.energy(x) + 1.0)
        trainer.model_density = Tempered(temperature=2.0)  # the binding beats both
        halved = trainer.energy(x).reshape(-1) / 2
        torch.testing.assert_close(trainer.model_energy()(x), halved)
    # A wrapped closure sits on the energy's device and dtype, so metrics can place points.
    assert isinstance(trainer.model_energy(), torch.nn.Module)


def test_a_model_energy_that_is_not_callable_is_named():
    class Broken(Langevin):
        def model_energy(self, energy):
            return 3.0

    trainer = _trainer(0, n_rounds=1, sampler=Broken(step_size=0.01, n_steps=2))
    with pytest.raises(TypeError, match=r"sampler's model_energy \(Broken\).*not an energy"):
        trainer.model_energy()


def test_a_declared_model_energy_is_what_metrics_and_pictures_score(tmp_path, monkeypatch):
    import ebmkit.tracking.plots as plots

    trainer = _declaring_trainer()
    untrained = toy_metrics(trainer.energy, trainer.dataset.sample(16), trainer.dataset)
    grad_enabled: list[bool] = []
    declared = trainer.sampler.model_energy

    def recording(energy):
        function = declared(energy)
        return lambda x: (grad_enabled.append(torch.is_grad_enabled()), function(x))[1]

    object.__setattr__(trainer.sampler, "model_energy", recording)
    drawn = []
    original_figure = plots.density_figure

    def figure(energy, samples, dataset, **kwargs):
        drawn.append(energy)
        return original_figure(energy, samples, dataset, resolution=20)

    monkeypatch.setattr(plots, "density_figure", figure)
    experiment = SimpleNamespace(
        rollback_factor=0.5,
        log_every=1,
        eval_every=1,
        sample_every=1,
        checkpoint_every=1,
        keep_checkpoints=1,
        metrics={},
    )
    observer = RunObserver(experiment, tmp_path, "")
    round = trainer.train_round()
    observer.after_round(trainer, round)
    observer.close()
    scored = observer.final_metrics
    assert grad_enabled and not any(grad_enabled)  # evaluated without a graph
    # The exact density is scored: grid KL 0, the density's weights exact; not the MLP's.
    assert abs(scored["grid_kl"]) < 1e-6 < untrained["grid_kl"]
    assert scored["density_mode_weight_error"] < 1e-3 < untrained["density_mode_weight_error"]
    assert scored["log_likelihood"] == pytest.approx(scored["data_log_likelihood"], abs=1e-3)
    x = trainer.dataset.sample(4)
    assert len(drawn) == 1
    torch.testing.assert_close(drawn[0](x), -trainer.dataset.log_density(x).float())


def test_a_config_scores_the_run_at_a_temperature_through_ebmkit_tempered() -> None:
    from pathlib import Path

    from ebmkit.config import build_configured

    config = Path(__file__).resolve().parents[1] / "gin" / "langevin_eight_gaussians.gin"
    bindings = [
        "trainers.Contrastive.model_density = @ebmkit.Tempered()",
        "ebmkit.Tempered.temperature = 0.5",
    ]
    trainer = build_configured(config, "trainers.Contrastive", bindings)
    x = torch.randn(6, 2)
    with torch.no_grad():
        expected = trainer.energy(x).reshape(6) / 0.5
        torch.testing.assert_close(trainer.model_energy()(x), expected)
