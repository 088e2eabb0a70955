r"""`initializers.Generator`: chains start at a generator's samples; the generator and its
inference model learn from the round (Dual-MCMC teaching, Cui & Han 2023).

One `LearnableModule` holds both networks (a Learnable nested in another would be found and
trained twice) with one Adam over two parameter groups, so the two updates of a round are one
optimizer step on L_G + L_I: the losses share no parameter, so that is exactly a step on each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ebmkit import (
    DivergenceError,
    InitBatch,
    Langevin,
    LearnableModule,
    Round,
    Sampler,
    SchedulerFactory,
)
from ebmkit.compatibility import IncompatibleError
from ebmkit_dual_mcmc.posterior import PosteriorEnergy, gaussian_nll, squared_error

if TYPE_CHECKING:
    from ebmkit.testing import ShapeCase

__all__ = ["LOSS_SCALINGS", "Generator", "default_posterior_sampler", "energy_drop"]

LOSS_SCALINGS = ("paper", "code")
"""How L_G is scaled: "paper" × 1/(2σ²) (the Gaussian log-likelihood), "code" × 1."""


def default_posterior_sampler() -> Langevin:
    """The reference code's z-revision: 10 Langevin steps δ = η = 0.1, i.e. ULA with step
    s = δ²/2 = 0.005 and noise √(2s) = 0.1 (temperature 1)."""
    return Langevin(step_size=0.005, n_steps=10)


def _name(module: object) -> str:
    return str(getattr(module, "component_name", type(module).__name__))


def energy_drop(energy: object, x0: Tensor, x_revised: Tensor) -> Tensor:
    """mean E(x0) − mean E(x̃) under one energy (> 0: the EBM's revision lowered it), with
    no side effect on the energy's buffers.

    A forward pass of a spectral-norm network in training mode advances its power iteration
    (BatchNorm its running statistics), so a logged statistic would change the energy's
    parameters after its next step, and with it the result of the update order; the buffers
    are put back. Both terms use the energy as it is now (after the energy's step when the
    Learnables learn after it), never E_t(x̃) against E_{t+1}(x0).
    """
    buffers = dict(energy.named_buffers()) if isinstance(energy, nn.Module) else {}
    saved = {name: value.clone() for name, value in buffers.items()}
    try:
        with torch.no_grad():
            return energy(x0).mean() - energy(x_revised).mean()
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                buffers[name].copy_(value)


class Generator(LearnableModule):
    """x0 = g(z), z ~ N(0, I): chains start at generator samples, z kept as `latents`.

    Each round `learn` reads the data x (`round.x_data`), the prior z behind the chains'
    start (`round.init.latents`) and the EBM's revision x̃ of g(z) (`round.result.x`), then

    1. revises the posterior of x in z: z0 ~ q(z|x) (reparameterised), z̃ = k_z steps of
       `posterior_sampler` on U(z) = ‖x − g(z)‖²/(2σ²) + ‖z‖²/2 (frozen networks, detached);
    2. steps the generator on L_G = c·(1/B)[λ_d Σ‖x − g(z̃)‖² + λ_s Σ‖x̃ − g(z)‖²]
       (c = 1/(2σ²) in the "paper" scaling, 1 in the "code" one): maximum likelihood on the
       revised posterior pairs (x, z̃) and CoopNets teaching on (x̃, z);
    3. steps the inference model on L_I = mean NLL_q(z̃|x) + λ_i mean NLL_q(z|x̃).

    All of it reads the round's networks as they were when x̃ and z̃ were drawn, so the order
    of the three updates (generator, inference, EBM) does not change any parameter.

    Arguments:
        generator: g (a ``generators.*`` net: `latent_dim`, (B, d) → (B, *x shape)).
        inference: q (an ``inference_models.*`` net: x → (mean, log-variance)).
        sigma: the observation noise σ of p(x|z) = N(g(z), σ²I).
        posterior_sampler: the z-revision (default `default_posterior_sampler`); in gin a
            scoped sampler, e.g. ``@posterior/samplers.Langevin()``.
        posterior_steps: its number of steps k_z (None: the sampler's `n_steps`).
        lambda_data, lambda_teach, lambda_inference: λ_d, λ_s, λ_i (paper 1/1/1; the
            reference code 1/50/0.1 on CIFAR-10).
        loss_scaling: "paper" or "code" (see above).
        nll_epsilon: ε in the NLL's denominator e^ℓ + ε (0 exact; the code's 1e-6).
        logvar_clamp: clamp q's log-variance to (low, high), e.g. (−10, 5) (None: off, as
            in the reference code).
        observation_noise: add σε to x0 = g(z) (default off: the chains start at the mean).
        learning_rate_generator, learning_rate_inference: Adam's learning rates.
        betas, weight_decay, grad_clip, scheduler, scheduler_interval: as `LearnableModule`
            (both groups; `grad_clip` clips the two networks' joint norm).
        energy_revision_stats: also log E(x0) − E(x̃) (see `energy_drop`: two energy passes
            without gradient or side effect).

    Example:
        >>> g = torch.nn.Linear(2, 2)
        >>> g.latent_dim = 2
        >>> class Q(torch.nn.Module):
        ...     latent_dim = 2
        ...     def forward(self, x):
        ...         return x, torch.zeros_like(x)
        >>> batch = Generator(generator=g, inference=Q()).sample(5)
        >>> batch.x.shape, batch.latents.shape
        (torch.Size([5, 2]), torch.Size([5, 2]))
    """

    def __init__(
        self,
        *,
        generator: nn.Module,
        inference: nn.Module,
        sigma: float = 0.3,
        posterior_sampler: Sampler | None = None,
        posterior_steps: int | None = None,
        lambda_data: float = 1.0,
        lambda_teach: float = 1.0,
        lambda_inference: float = 1.0,
        loss_scaling: str = "paper",
        nll_epsilon: float = 0.0,
        logvar_clamp: tuple[float, float] | None = None,
        observation_noise: bool = False,
        learning_rate_generator: float = 3e-4,
        learning_rate_inference: float = 1e-4,
        betas: tuple[float, float] = (0.0, 0.9),
        weight_decay: float = 5e-4,
        grad_clip: float | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "round",
        energy_revision_stats: bool = True,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate_generator,
            betas=betas,
            weight_decay=weight_decay,
            grad_clip=grad_clip,
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
        )
        owner = "initializers.Generator"
        for name, network in (("generator", generator), ("inference", inference)):
            if not isinstance(network, nn.Module):
                raise TypeError(
                    f"{owner}.{name} must be a torch nn.Module, e.g. @{name}s.MLP(); got "
                    f"{type(network).__name__}".replace("inferences", "inference_models")
                )
        latent = getattr(generator, "latent_dim", None)
        if getattr(inference, "latent_dim", latent) != latent:
            raise ValueError(
                f"{owner}: the generator {_name(generator)} has latent_dim {latent} but the "
                f"inference model {_name(inference)} has latent_dim {inference.latent_dim}; "
                f"bind the same latent_dim to both"
            )
        if not isinstance(latent, int) or latent < 1:
            raise ValueError(
                f"{owner}.generator must say its latent dimension (an int attribute "
                f"latent_dim >= 1); {_name(generator)} has {latent!r}"
            )
        if not sigma > 0:
            raise ValueError(f"{owner}.sigma must be > 0, got {sigma}")
        if loss_scaling not in LOSS_SCALINGS:
            raise ValueError(
                f"{owner}.loss_scaling must be one of {list(LOSS_SCALINGS)}, got {loss_scaling!r}"
            )
        for name, value in (
            ("lambda_data", lambda_data),
            ("lambda_teach", lambda_teach),
            ("lambda_inference", lambda_inference),
            ("nll_epsilon", nll_epsilon),
        ):
            if not value >= 0:
                raise ValueError(f"{owner}.{name} must be >= 0, got {value}")
        if not learning_rate_inference > 0:
            raise ValueError(
                f"{owner}.learning_rate_inference must be > 0, got {learning_rate_inference}"
            )
        if logvar_clamp is not None:
            logvar_clamp = (float(logvar_clamp[0]), float(logvar_clamp[1]))
            if not logvar_clamp[0] < logvar_clamp[1]:
                raise ValueError(f"{owner}.logvar_clamp must be (low, high), got {logvar_clamp}")
        if posterior_steps is not None and posterior_steps < 0:
            raise ValueError(f"{owner}.posterior_steps must be >= 0, got {posterior_steps}")
        self.generator = generator
        self.inference = inference
        self.latent_dim = latent
        self.sigma = float(sigma)
        self.posterior_sampler = (
            default_posterior_sampler() if posterior_sampler is None else posterior_sampler
        )
        self.posterior_steps = posterior_steps
        self.lambda_data = float(lambda_data)
        self.lambda_teach = float(lambda_teach)
        self.lambda_inference = float(lambda_inference)
        self.loss_scaling = loss_scaling
        self.nll_epsilon = float(nll_epsilon)
        self.logvar_clamp = logvar_clamp
        self.observation_noise = bool(observation_noise)
        self.learning_rate_inference = float(learning_rate_inference)
        self.energy_revision_stats = bool(energy_revision_stats)

    @classmethod
    def testing_cases(cls, shape: Sequence[int]) -> list[ShapeCase]:
        """For the composability matrix: MLP generator and inference model (latent 2, width
        8) for chains of `shape` (any shape: the MLPs flatten and reshape), 2 posterior
        Langevin steps (seeded; the global RNG untouched)."""
        from ebmkit.testing import ShapeCase
        from ebmkit_dual_mcmc.networks import GeneratorMLP, InferenceMLP

        shape = tuple(int(size) for size in shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            generator = GeneratorMLP(latent_dim=2, output_shape=shape, hidden=(8,))
            inference = InferenceMLP(input_shape=shape, latent_dim=2, hidden=(8,))
        posterior = Langevin(step_size=0.005, n_steps=2)
        initializer = cls(generator=generator, inference=inference, posterior_sampler=posterior)
        return [ShapeCase(name="mlp", component=initializer)]

    def check_compatible(
        self,
        *,
        sampler: object,
        initializer: object,
        energy: object,
        shape: tuple | None,
        batch_size: int | None = None,
    ) -> None:
        """Refuse a generator whose samples (its `output_shape`) or an inference model whose
        input (its `input_shape`) is not the chains' shape."""
        if shape is None:
            return
        for role, network, attribute in (
            ("generator", self.generator, "output_shape"),
            ("inference model", self.inference, "input_shape"),
        ):
            declared = getattr(network, attribute, None)
            if declared is not None and tuple(declared) != tuple(shape):
                plural = "generators" if role == "generator" else "inference_models"
                raise IncompatibleError(
                    f"initializers.Generator: its {role} {_name(network)} has {attribute} "
                    f"{tuple(declared)} but the chains (the data) are {tuple(shape)} per "
                    f"sample; build it for the data's shape (e.g. {plural}.MLP.{attribute} = "
                    f"{tuple(shape)}, or a network of that image size)"
                )

    # Optimizer ----------------------------------------------------------------------------

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Adam with one parameter group per network (their learning rates, one weight decay)."""
        return torch.optim.Adam(
            [
                {"params": self.generator.parameters(), "lr": self.learning_rate},
                {"params": self.inference.parameters(), "lr": self.learning_rate_inference},
            ],
            betas=self.betas,
            weight_decay=self.weight_decay,
        )

    def distributed_modules(self) -> dict[str, nn.Module]:
        """A data-parallel run wraps the two networks."""
        return {"generator": self.generator, "inference": self.inference}

    # The networks' outputs, checked ---------------------------------------------------------

    def _device(self) -> torch.device:
        parameter = next(self.generator.parameters(), None)
        return torch.device("cpu") if parameter is None else parameter.device

    def _dtype(self) -> torch.dtype:
        parameter = next(self.generator.parameters(), None)
        return torch.get_default_dtype() if parameter is None else parameter.dtype

    def _check(self, value: Tensor, what: str, network: str, round_index: int) -> Tensor:
        """`value`, or DivergenceError naming the network when it is not finite."""
        if not bool(torch.isfinite(value).all()):
            rows = int((~torch.isfinite(value)).reshape(value.shape[0], -1).any(1).sum())
            module = self.generator if network == "generator" else self.inference
            where = f" at round {round_index}" if round_index >= 0 else ""
            raise DivergenceError(
                f"initializers.Generator: its {network} {_name(module)} gave a non-finite "
                f"{what} ({rows} of {value.shape[0]} rows){where}",
                round_index,
                "lower its learning rate (initializers.Generator.learning_rate_"
                f"{network}) or clip the gradient (grad_clip)",
            )
        return value

    def generate(self, z: Tensor, round_index: int = -1) -> Tensor:
        """x0 = g(z) (+ σε with `observation_noise`), no graph, checked finite."""
        with torch.no_grad():
            x = self.generator(z)
            if self.observation_noise:
                x = x + self.sigma * torch.randn_like(x)
        return self._check(x, "sample g(z)", "generator", round_index)

    def infer(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x)'s mean and log-variance (clamped when asked), on the graph."""
        mean, log_var = self.inference(x)
        if self.logvar_clamp is not None:
            log_var = log_var.clamp(*self.logvar_clamp)
        return mean, log_var

    # Initializer --------------------------------------------------------------------------

    def sample(self, n: int) -> InitBatch:
        """`n` generator samples x0 = g(z), z ~ N(0, I) from the global (checkpointed) RNG."""
        z = torch.randn(n, self.latent_dim, device=self._device(), dtype=self._dtype())
        return InitBatch(x=self.generate(z), latents=z)

    def regenerate(self, init: InitBatch, round_index: int = -1) -> InitBatch:
        """The same latents through the current generator: x0′ = g(z) (the code's refresh)."""
        if init.latents is None:
            raise ValueError(
                "initializers.Generator.regenerate needs the InitBatch it drew (latents z); "
                "got one without latents"
            )
        return InitBatch(x=self.generate(init.latents, round_index), latents=init.latents)

    def update(self, round: Round) -> None:
        """Nothing: the networks learn in `learn` (the trainer calls it as a Learnable)."""

    # Posterior revision -------------------------------------------------------------------

    def posterior_energy(self, x: Tensor) -> PosteriorEnergy:
        """U(z) = ‖x − g(z)‖²/(2σ²) + ‖z‖²/2 for the batch `x`."""
        return PosteriorEnergy(self.generator, x, self.sigma)

    def revise_posterior(
        self, x: Tensor, start: Tensor, n_steps: int | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """k_z steps of the posterior sampler from `start` (frozen nets); z̃ detached and
        the mean U at the start and the end."""
        energy = self.posterior_energy(x)
        steps = self.posterior_steps if n_steps is None else n_steps
        result = self.posterior_sampler.sample(energy, start.detach(), steps)
        z = result.x.detach()
        with torch.no_grad():
            stats = {
                "posterior/energy_start": energy(start).mean(),
                "posterior/energy_end": energy(z).mean(),
            }
        return z, stats

    def posterior_start(self, x: Tensor, round_index: int = -1) -> Tensor:
        """z0 ~ q(z|x) = μ + e^{ℓ/2}ε, no graph (the revision's start in training)."""
        with torch.no_grad():
            mean, log_var = self.infer(x)
            self._check(mean, "mean μ(x)", "inference", round_index)
            self._check(log_var, "log-variance ℓ(x)", "inference", round_index)
            return mean + (0.5 * log_var).exp() * torch.randn_like(mean)

    def reconstruct(self, x: Tensor, n_steps: int = 0, start: str = "inference") -> Tensor:
        """g(z_k): z0 = μ(x) ("inference") or z0 ~ N(0, I) ("noise"), then `n_steps`
        posterior steps; no graph."""
        if start not in ("inference", "noise"):
            raise ValueError(f"reconstruct: start must be 'inference' or 'noise', got {start!r}")
        with torch.no_grad():
            if start == "inference":
                z = self.infer(x)[0]
            else:
                z = torch.randn(x.shape[0], self.latent_dim, device=x.device, dtype=x.dtype)
        if n_steps > 0:
            z, _ = self.revise_posterior(x, z, n_steps)
        with torch.no_grad():
            return self.generator(z)

    # Learning ---------------------------------------------------------------------------

    def learn(self, round: Round) -> dict[str, Tensor]:
        """One step of both networks on `loss(round)`, then their parameters checked finite.

        A step can leave NaN weights with a finite loss (a huge update): caught here, the
        round stops naming the network before it is checkpointed, whatever the learn order.
        """
        losses = super().learn(round)
        with torch.no_grad():
            for network in ("generator", "inference"):
                module = getattr(self, network)
                finite = [p.isfinite().all() for p in module.parameters()]
                if finite and not bool(torch.stack(finite).all()):
                    raise DivergenceError(
                        f"initializers.Generator: its {network} {_name(module)} has non-finite "
                        f"parameters after its step at round {round.index}",
                        round.index,
                        f"lower its learning rate (initializers.Generator.learning_rate_"
                        f"{network}) or clip the gradient (grad_clip)",
                    )
        return losses

    def loss(self, round: Round) -> dict[str, Tensor]:
        """The generator's and the inference model's losses on the round (see the class)."""
        x, z, x_revised = round.x_data, round.init.latents, round.result.x.detach()
        if z is None:
            raise ValueError(
                "initializers.Generator learns from the latents z behind the chains' start, "
                "but round.init.latents is None: the chains must start from this initializer"
            )
        index = round.index
        z_revised, stats = self.revise_posterior(x, self.posterior_start(x, index))
        scale = 1 / (2 * self.sigma**2) if self.loss_scaling == "paper" else 1.0
        reconstructed = self._check(self.generator(z_revised), "g(z̃)", "generator", index)
        taught = self.generator(z)
        data_term = squared_error(x, reconstructed).mean()
        teach_term = squared_error(x_revised, taught).mean()
        generator_loss = scale * (self.lambda_data * data_term + self.lambda_teach * teach_term)
        mean, log_var = self.infer(x)
        self._check(torch.cat([mean, log_var], 1), "output on data", "inference", index)
        posterior_term = gaussian_nll(z_revised, mean, log_var, self.nll_epsilon).mean()
        mean_revised, log_var_revised = self.infer(x_revised)
        sleep_term = gaussian_nll(z, mean_revised, log_var_revised, self.nll_epsilon).mean()
        inference_loss = posterior_term + self.lambda_inference * sleep_term
        x0 = round.init.x
        losses = {
            "loss": generator_loss + inference_loss,
            "generator/loss": generator_loss,
            "generator/data": data_term,
            "generator/teach": teach_term,
            "inference/loss": inference_loss,
            "inference/posterior": posterior_term,
            "inference/sleep": sleep_term,
            "inference/log_var": log_var.mean(),
            "revision/shift": squared_error(x_revised, x0).mean() / x0[0].numel(),
            **stats,
        }
        if self.energy_revision_stats and round.energy is not None:
            losses["revision/energy_drop"] = energy_drop(round.energy, x0, x_revised)
        return losses

    def extra_repr(self) -> str:
        return (
            f"sigma={self.sigma}, lambdas=({self.lambda_data}, {self.lambda_teach}, "
            f"{self.lambda_inference}), loss_scaling={self.loss_scaling!r}"
        )
