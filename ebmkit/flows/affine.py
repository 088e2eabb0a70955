r"""Affine flows: full covariance (`Affine`) and per coordinate (`ElementwiseAffine`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ebmkit.compatibility import require_vector_shape
from ebmkit.flows.base import FlowModule

__all__ = ["Affine", "ElementwiseAffine"]


def _as_vector(value: float | Sequence[float], size: int, name: str) -> Tensor:
    tensor = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if tensor.dim() == 0:
        return tensor.expand(size).clone()
    if tensor.shape != (size,):
        raise ValueError(f"flows.Affine.{name} must be a number or {size} numbers, got {value!r}")
    return tensor.clone()


class Affine(FlowModule):
    """x = μ + L z with L lower triangular, positive diagonal: the Gaussian N(μ, L Lᵀ).

    forward: z = L⁻¹(x − μ), log|det ∂z/∂x| = −Σ log L_ii. Starts at the identity (μ = 0,
    L = I) unless `loc`/`scale` say otherwise; its forward-KL fit reaches the sample mean
    and covariance of what it is fitted on.

    Arguments:
        dim: the number of coordinates (event shape (dim,)).
        loc: the initial μ (a number or `dim` numbers).
        scale: the initial diagonal of L (a number or `dim` numbers, > 0).
        **settings: `FlowModule`'s (fit_on, learning_rate, trainable, ...).

    Example:
        >>> flow = Affine(dim=2, loc=1.0, scale=3.0)
        >>> z, logdet = flow(torch.tensor([[1.0, 4.0]]))
        >>> z.tolist(), round(logdet.item(), 4)
        ([[0.0, 1.0]], -2.1972)
    """

    def __init__(
        self,
        *,
        dim: int,
        loc: float | Sequence[float] = 0.0,
        scale: float | Sequence[float] = 1.0,
        **settings: object,
    ) -> None:
        if int(dim) < 1:
            raise ValueError(f"flows.Affine.dim must be >= 1, got {dim}")
        settings.setdefault("event_shape", (int(dim),))
        super().__init__(**settings)  # type: ignore[arg-type]
        if self.event_shape != (int(dim),):
            raise ValueError(
                f"flows.Affine: event_shape {self.event_shape} does not match dim = {dim}"
            )
        diagonal = _as_vector(scale, int(dim), "scale")
        if not bool((diagonal > 0).all()):
            raise ValueError(f"flows.Affine.scale must be > 0, got {scale!r}")
        self.loc = nn.Parameter(_as_vector(loc, int(dim), "loc"))
        self.log_diagonal = nn.Parameter(diagonal.log())
        self.off_diagonal = nn.Parameter(torch.zeros(int(dim), int(dim)))

    @classmethod
    def testing_cases(cls, shape: Sequence[int] | None = None) -> list[FlowModule]:
        """A 3-D flow with a random full covariance, or (`shape` = (dim,)) one of that
        dimension (seeded; the global RNG is untouched). Vectors only: another shape raises
        IncompatibleError."""
        dim = (
            3
            if shape is None
            else require_vector_shape(
                "flows.Affine", shape, "flows.ElementwiseAffine or flows.Glow for images"
            )
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            factor = torch.randn(dim, dim)
            covariance = factor @ factor.T + 0.5 * torch.eye(dim)
            return [cls.from_gaussian(torch.randn(dim), covariance)]

    @classmethod
    def from_gaussian(cls, mean: Tensor, covariance: Tensor, **settings: object) -> Affine:
        """The affine flow whose density is exactly N(mean, covariance) (Cholesky factor)."""
        factor = torch.linalg.cholesky(covariance)
        flow = cls(dim=mean.shape[0], **settings)
        with torch.no_grad():
            flow.to(mean.dtype)
            flow.loc.copy_(mean)
            flow.log_diagonal.copy_(factor.diagonal().log())
            flow.off_diagonal.copy_(factor.tril(-1))
        return flow

    def scale_tril(self, dtype: torch.dtype | None = None) -> Tensor:
        """L: the strict lower triangle of `off_diagonal`, exp(`log_diagonal`) on the diagonal."""
        tril = self.off_diagonal.tril(-1) + torch.diag(self.log_diagonal.exp())
        return tril if dtype is None else tril.to(dtype)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """z = L⁻¹(x − μ), log|det ∂z/∂x| = −Σ log L_ii."""
        self.check_input(x)
        tril = self.scale_tril(x.dtype)
        centred = (x - self.loc.to(x.dtype)).unsqueeze(-1)
        z = torch.linalg.solve_triangular(tril, centred, upper=False).squeeze(-1)
        logdet = -self.log_diagonal.to(x.dtype).sum().expand(x.shape[0])
        return z, logdet

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """x = μ + L z, log|det ∂x/∂z| = Σ log L_ii."""
        self.check_input(z, "base points")
        x = self.loc.to(z.dtype) + z @ self.scale_tril(z.dtype).T
        logdet = self.log_diagonal.to(z.dtype).sum().expand(z.shape[0])
        return x, logdet


class ElementwiseAffine(FlowModule):
    """x = μ + exp(s) ⊙ z per coordinate, for any event shape (vectors or images).

    With `event_shape` set, μ and s hold one value per coordinate; with ``event_shape=None``
    they are two scalars shared by every coordinate and the flow maps batches of any shape
    (what a sampler's `testing_cases` need: the checks run on (2,) and (3, 4, 4) chains).
    Computes in the input's dtype.

    Arguments:
        event_shape: the shape of one sample, or None for scalar parameters on any shape.
        loc: the initial μ (a number).
        scale: the initial exp(s) (a number > 0).
        **settings: `FlowModule`'s (fit_on, learning_rate, trainable, ...).

    Example:
        >>> flow = ElementwiseAffine(event_shape=None, loc=1.0, scale=3.0)
        >>> flow.log_prob(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2])
    """

    def __init__(
        self,
        *,
        event_shape: Sequence[int] | None,
        loc: float = 0.0,
        scale: float = 1.0,
        **settings: object,
    ) -> None:
        super().__init__(event_shape=event_shape, **settings)  # type: ignore[arg-type]
        if not scale > 0:
            raise ValueError(f"flows.ElementwiseAffine.scale must be > 0, got {scale!r}")
        shape = () if self.event_shape is None else self.event_shape
        self.loc = nn.Parameter(torch.full(shape, float(loc)))
        self.log_scale = nn.Parameter(torch.full(shape, float(scale)).log())

    @classmethod
    def testing_cases(cls, shape: Sequence[int] | None = None) -> list[FlowModule]:
        """Per-coordinate parameters on (2, 3) (or on `shape` when given), and scalar ones on
        any shape (checked on `ebmkit.testing.ANY_SHAPE`); seeded, away from the identity."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            shaped = cls(event_shape=(2, 3) if shape is None else tuple(shape))
            with torch.no_grad():
                shaped.loc.normal_(std=0.2 if shape is not None else 1.0)
                shaped.log_scale.normal_(std=0.5)
        return [shaped, cls(event_shape=None, loc=1.0, scale=2.0)]

    def _logdet(self, x: Tensor) -> Tensor:
        per_coordinate = self.log_scale.to(x.dtype).expand(x.shape[1:])
        return per_coordinate.sum().expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """z = (x − μ)·exp(−s), log|det ∂z/∂x| = −Σ s."""
        self.check_input(x)
        z = (x - self.loc.to(x.dtype)) * torch.exp(-self.log_scale.to(x.dtype))
        return z, -self._logdet(x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """x = μ + exp(s)·z, log|det ∂x/∂z| = Σ s."""
        self.check_input(z, "base points")
        x = self.loc.to(z.dtype) + torch.exp(self.log_scale.to(z.dtype)) * z
        return x, self._logdet(z)
