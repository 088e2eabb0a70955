r"""zuko's RealNVP, NSF and MAF as ebmkit flows (vectors), started near the identity."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import zuko
from torch import Tensor, nn

from ebmkit.compatibility import require_vector_shape
from ebmkit.flows.base import FlowModule

__all__ = ["MAF", "NSF", "RealNVP", "ZukoFlow", "shrink_conditioners"]


def _last_linear(network: nn.Module) -> nn.Module:
    layers = [m for m in network.modules() if isinstance(getattr(m, "weight", None), Tensor)]
    if not layers:
        raise TypeError(f"no linear layer found in the conditioner {type(network).__name__}")
    return layers[-1]


def shrink_conditioners(flow: zuko.flows.Flow, scale: float) -> int:
    """Multiply the output layer of every conditioner of a zuko flow by `scale`; returns how
    many transforms were shrunk.

    zuko's conditioners (`hyper` MLPs) start at PyTorch's default init, so a fresh flow is far
    from the identity. Their outputs parametrise the univariate transforms so that 0 is the
    identity (affine: shift 0, log-scale 0; spline: equal bins, unit slopes), so shrinking the
    last layer's weight and bias by `scale` makes the flow the identity up to O(`scale`)
    (exactly at 0). A 1-D flow has no conditioner: its unconditional parameters (`phi`) are
    shrunk instead.
    """
    shrunk = 0
    with torch.no_grad():
        for transform in flow.transform.transforms:
            if hasattr(transform, "hyper"):
                layer = _last_linear(transform.hyper)
                parameters = [layer.weight, layer.bias]
            elif hasattr(transform, "phi"):
                parameters = list(transform.phi)
            else:
                raise TypeError(
                    f"cannot start {type(transform).__name__} near the identity: it has neither "
                    f"a conditioner (hyper) nor unconditional parameters (phi)"
                )
            for parameter in parameters:
                if parameter is not None:
                    parameter.mul_(scale)
            shrunk += 1
    return shrunk


class ZukoFlow(FlowModule):
    """Base of the zuko-backed flows: a zuko flow over vectors in the density direction.

    zuko's flow ``flow()`` is a distribution whose ``.transform`` maps data to the base
    (x → z); `forward` is that transform's `call_and_ladj`, `inverse` its ``.inv``'s (whose
    log-det is log|det ∂x/∂z|, i.e. minus the forward's at x). zuko's own base distribution
    and its `.sample`/`.rsample` are never used: base noise comes from `base_noise` with the
    run's generator.

    Parameters and data must share a dtype (the conditioners are plain linear layers): a
    float64 input to a float32 flow is refused with the fix, ``flow.to(torch.float64)``.

    Arguments:
        dim: the number of coordinates (event shape (dim,)).
        transforms: how many transforms are composed.
        hidden_features: the conditioners' hidden widths.
        init_scale: the conditioners' output layers are multiplied by this at construction,
            so the flow starts within O(init_scale) of the identity (0: exactly the identity;
            1: zuko's default init). See `shrink_conditioners`.
        **settings: `FlowModule`'s (fit_on, reverse_kl_weight, learning_rate, trainable, ...).
    """

    def __init__(
        self,
        *,
        dim: int,
        transforms: int = 3,
        hidden_features: Sequence[int] = (64, 64),
        init_scale: float = 1e-3,
        **settings: Any,
    ) -> None:
        name = f"flows.{type(self).__name__}"
        if int(dim) < 1:
            raise ValueError(f"{name}.dim must be >= 1, got {dim}")
        if int(transforms) < 1:
            raise ValueError(f"{name}.transforms must be >= 1, got {transforms}")
        if not init_scale >= 0:
            raise ValueError(f"{name}.init_scale must be >= 0, got {init_scale}")
        settings.setdefault("event_shape", (int(dim),))
        zuko_settings = {key: settings.pop(key) for key in self.zuko_settings() if key in settings}
        super().__init__(**settings)
        if self.event_shape != (int(dim),):
            raise ValueError(f"{name}: event_shape {self.event_shape} does not match dim = {dim}")
        self.dim = int(dim)
        self.flow = self.build(
            features=self.dim,
            transforms=int(transforms),
            hidden_features=tuple(int(width) for width in hidden_features),
            **zuko_settings,
        )
        shrink_conditioners(self.flow, float(init_scale))

    @classmethod
    def zuko_settings(cls) -> tuple[str, ...]:
        """Further keyword arguments passed through to the zuko class."""
        return ()

    def build(self, **settings: Any) -> zuko.flows.Flow:
        """The zuko flow; subclasses write this."""
        raise NotImplementedError

    @classmethod
    def testing_cases(cls, shape: Sequence[int] | None = None) -> list[FlowModule]:
        """Two small flows with zuko's full-size init (a far-from-identity map, so the checks
        have something to find), seeded without touching the global RNG: 3-D and 1-D; or
        (`shape` = (dim,)) one of that dimension. Vectors only: another shape raises
        IncompatibleError."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            if shape is not None:
                name = f"flows.{cls.__name__}"
                dim = require_vector_shape(name, shape, "flows.Glow for images")
                return [cls(dim=dim, transforms=2, hidden_features=(16,), init_scale=0.1)]
            return [
                cls(dim=3, transforms=2, hidden_features=(16, 16), init_scale=1.0),
                cls(dim=1, transforms=2, hidden_features=(8,), init_scale=1.0),
            ]

    def check_input(self, x: Tensor, what: str = "data") -> None:
        """Raise ValueError when `x` is not a batch of `dim`-vectors, naming the fix."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            per_sample = tuple(x.shape[1:]) if x.dim() else ()
            fix = (
                f"set {self.component_name}.dim = {x.shape[1]} to match the data"
                if x.dim() == 2
                else "flatten the data to vectors (B, dim), or use flows.Glow for images"
            )
            raise ValueError(
                f"{self.component_name} has dim = {self.dim} (event_shape {self.event_shape}) "
                f"but got {what} of shape {per_sample} per sample (batch {tuple(x.shape)}); "
                f"{fix}"
            )

    def _check_dtype(self, value: Tensor) -> None:
        reference = self._reference_tensor()
        if value.dtype != reference.dtype:
            raise TypeError(
                f"{self.component_name} holds {reference.dtype} parameters but got "
                f"{value.dtype} input; move the flow with flow.to({value.dtype}) or pass "
                f"{reference.dtype} input"
            )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """z = f(x) with f zuko's transform (data → base), and log|det ∂z/∂x|, shape (B,)."""
        self.check_input(x)
        self._check_dtype(x)
        return self.flow.transform(None).call_and_ladj(x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """x = f⁻¹(z) and log|det ∂x/∂z|, shape (B,)."""
        self.check_input(z, "base points")
        self._check_dtype(z)
        return self.flow.transform(None).inv.call_and_ladj(z)


class RealNVP(ZukoFlow):
    """RealNVP: affine coupling layers with alternating checkered masks (zuko's RealNVP).

    References:
        Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP" (2016),
        arXiv:1605.08803.

    Arguments:
        dim, transforms, hidden_features, init_scale, **settings: see `ZukoFlow`.
        randmask: random coupling masks instead of alternating checkered ones.

    Example:
        >>> flow = RealNVP(dim=2, init_scale=0.0)  # exactly the identity at the start
        >>> x = torch.tensor([[0.5, -1.0]])
        >>> bool(torch.allclose(flow.log_prob(x), -0.5 * x.square().sum(1) - 1.8379, atol=1e-4))
        True
    """

    @classmethod
    def zuko_settings(cls) -> tuple[str, ...]:
        """`randmask`."""
        return ("randmask",)

    def build(self, **settings: Any) -> zuko.flows.Flow:
        """zuko.flows.RealNVP."""
        return zuko.flows.RealNVP(**settings)


class MAF(ZukoFlow):
    """Masked autoregressive flow: affine autoregressive transforms (zuko's MAF).

    `forward` (the density direction) is one pass; `inverse` (sampling) takes `passes`
    sequential passes (`dim` by default: fully autoregressive).

    References:
        Papamakarios, Pavlakou & Murray, "Masked Autoregressive Flow for Density Estimation"
        (2017), arXiv:1705.07057.

    Arguments:
        dim, transforms, hidden_features, init_scale, **settings: see `ZukoFlow`.
        randperm: random feature orders instead of alternating ascending/descending ones.
        passes: passes of the inverse (2 = coupling); default `dim`.
    """

    @classmethod
    def zuko_settings(cls) -> tuple[str, ...]:
        """`randperm`, `passes`."""
        return ("randperm", "passes")

    def build(self, **settings: Any) -> zuko.flows.Flow:
        """zuko.flows.MAF."""
        return zuko.flows.MAF(**settings)


class NSF(ZukoFlow):
    """Neural spline flow: monotonic rational-quadratic splines on [−5, 5], autoregressive
    (zuko's NSF); identity outside [−5, 5], so standardise data of another scale.

    References:
        Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows" (2019),
        arXiv:1906.04032.

    Arguments:
        dim, transforms, hidden_features, init_scale, **settings: see `ZukoFlow`.
        bins: spline bins per coordinate.
        slope: the splines' minimum slope.
        randperm, passes: as `MAF`'s (``passes=2`` for coupling splines).
    """

    @classmethod
    def zuko_settings(cls) -> tuple[str, ...]:
        """`bins`, `slope`, `randperm`, `passes`."""
        return ("bins", "slope", "randperm", "passes")

    def build(self, **settings: Any) -> zuko.flows.Flow:
        """zuko.flows.NSF."""
        return zuko.flows.NSF(**settings)
