"""Test-only pieces of the flow-MCMC tests: a nonlinear flow, the wrong variants the exact tests
must catch, the unbalanced mixture of the method reference and its parametric EBM.

The wrong variants (method reference §2.4) are written as small flows or subclasses, so the
tests run the real kernels with one thing changed:

- `DensityDropped`: a flow whose log-density reads 0 everywhere (λ dropped from the IMH ratio
  and the i-SIR weights), proposing the same points.
- `JacobianDropped`: a flow whose inverse reports log|det ∂T/∂z| = 0 (the proposal's density
  missing its Jacobian; neutra's latent target without the log-det).
- `ISIRWithoutCurrent`: i-SIR picking among N fresh proposals, the current state left out.
- `StaleCacheMALA`: MALA that hands the incoming extras on after it moved x (the authors'
  `GlobalLocal` keeps the IMH cache across local moves).
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor, nn

from ebmkit.flows import FlowModule, standard_normal_log_prob
from ebmkit.records import ChainState, StepInfo
from ebmkit.samplers.mala import MALA
from ebmkit.testing import MixtureTarget
from ebmkit_flow_mcmc import ISIR, LATENT, LOG_PROB
from ebmkit_flow_mcmc.densities import energy_only, no_step_size, propose
from ebmkit_flow_mcmc.isir import pick_by_weight

F64 = torch.float64

UNBALANCED = MixtureTarget(weights=(0.2, 0.8), means=(-2.0, 2.0), stds=(0.5, 0.5))
"""The reference's 1-D target: 0.2·N(−2, 0.5²) + 0.8·N(2, 0.5²)."""


def small_mode_weight(x: Tensor) -> float:
    """ŵ_small: the fraction of chains nearer −2 than +2."""
    return (x[:, 0] < 0).to(F64).mean().item()


class SinhAffine(FlowModule):
    """x = μ + L·sinh(z) (sinh per coordinate, then a full affine map): a nonlinear flow whose
    log-det varies with z, in float64.

    forward: u = L⁻¹(x − μ), z = asinh(u), log|det ∂z/∂x| = −Σ log L_ii − ½ Σ log(1 + u²).
    inverse: log|det ∂x/∂z| = Σ log L_ii + Σ log cosh z.
    """

    def __init__(self, dim: int, loc: Tensor | None = None, tril: Tensor | None = None) -> None:
        super().__init__(event_shape=(dim,))
        self.loc = nn.Parameter(torch.zeros(dim, dtype=F64) if loc is None else loc.clone())
        self.tril = nn.Parameter(torch.eye(dim, dtype=F64) if tril is None else tril.clone())

    @classmethod
    def seeded(cls, dim: int, seed: int) -> SinhAffine:
        """A random one: μ ~ N(0, I), L lower triangular with diagonal in (0.5, 2)."""
        generator = torch.Generator().manual_seed(seed)
        loc = torch.randn(dim, generator=generator, dtype=F64)
        tril = 0.5 * torch.randn(dim, dim, generator=generator, dtype=F64).tril(-1)
        diagonal = 0.5 + 1.5 * torch.rand(dim, generator=generator, dtype=F64)
        return cls(dim, loc, tril + torch.diag(diagonal))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        centred = (x - self.loc.to(x.dtype)).unsqueeze(-1)
        u = torch.linalg.solve_triangular(self.tril.to(x.dtype), centred, upper=False)
        u = u.squeeze(-1)
        logdet = -self.tril.diagonal().log().sum() - 0.5 * torch.log1p(u.square()).sum(1)
        return torch.asinh(u), logdet.to(x.dtype)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "base points")
        x = self.loc.to(z.dtype) + torch.sinh(z) @ self.tril.to(z.dtype).T
        logdet = self.tril.diagonal().log().sum() + torch.log(torch.cosh(z)).sum(1)
        return x, logdet.to(z.dtype)


class _Wrapped(FlowModule):
    def __init__(self, flow: FlowModule) -> None:
        super().__init__(event_shape=flow.event_shape)
        self.inner = flow

    @property
    def component_name(self) -> str:
        return f"{type(self).__name__}({self.inner.component_name})"


class DensityDropped(_Wrapped):
    """The same proposals, but log λ ≡ 0: a kernel that forgets the flow's density."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, _ = self.inner(x)
        return z, -standard_normal_log_prob(z)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x, _ = self.inner.inverse(z)
        return x, standard_normal_log_prob(z)


class JacobianDropped(_Wrapped):
    """The same map, but the inverse reports log|det ∂T/∂z| = 0 (the forward stays right)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.inner(x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x, logdet = self.inner.inverse(z)
        return x, torch.zeros_like(logdet)


class ISIRWithoutCurrent(ISIR):
    """Wrong i-SIR: N fresh proposals, one picked by weight; the current state is not one of
    the candidates (so the chain forgets where it was: importance resampling, not MCMC)."""

    def step(self, state, energy, *, generator=None, context=None):
        x = state.x
        points, latents, log_probs, values, log_weights = [], [], [], [], []
        for _ in range(self.n_particles):
            proposal, z, log_prob = propose(self.flow, x, generator, "ISIRWithoutCurrent")
            value = energy_only(energy, proposal)
            points.append(proposal)
            latents.append(z)
            log_probs.append(log_prob)
            values.append(value)
            log_weights.append(-(value + log_prob))
        index = pick_by_weight(torch.stack(log_weights, 1), generator)
        rows = torch.arange(x.shape[0])

        def take(candidates: list[Tensor]) -> Tensor:
            return torch.stack(candidates, 1)[rows, index]

        new_state = ChainState(
            x=take(points),
            energy=take(values),
            grad=None,
            extras={LOG_PROB: take(log_probs)},
            owned={**state.owned, LATENT: take(latents)},
        )
        info = StepInfo(
            acceptance_prob=None,
            accepted=None,
            step_size=no_step_size(x),
            n_grad_evals=0,
            n_energy_evals=self.n_particles,
            n_flow_evals=self.n_particles,
        )
        return new_state, info


@attrs.define(kw_only=True)
class StaleCacheMALA(MALA):
    """MALA that keeps the incoming extras after moving x (a stale flow cache)."""

    def step(self, state, energy, *, generator=None, context=None):
        new_state, info = super().step(state, energy, generator=generator, context=context)
        return attrs.evolve(new_state, extras=dict(state.extras)), info


class ParametricMixture(nn.Module):
    """E_θ(x) = −logsumexp_k(θ_k + log N(x; μ_k, σ²)), means ±2, σ = 0.5, θ learnable from 0.

    Its density is the mixture with weights softmax(θ).
    """

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(2, dtype=F64))
        self.register_buffer("means", torch.tensor([-2.0, 2.0], dtype=F64))

    def forward(self, x: Tensor) -> Tensor:
        z = (x.reshape(-1, 1) - self.means.to(x.dtype)) / 0.5
        log_normal = -0.5 * z.square() - math.log(0.5) - 0.5 * math.log(2 * math.pi)
        return -torch.logsumexp(self.logits.to(x.dtype) + log_normal, 1)

    def small_weight(self) -> float:
        """softmax(θ) of the mode at −2."""
        return torch.softmax(self.logits.detach(), 0)[0].item()
