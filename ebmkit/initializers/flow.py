r"""Chains that start from a normalizing flow's samples (CoopFlow, CPMLA)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import torch

from ebmkit.compatibility import check_event_shape
from ebmkit.flows.base import check_finite
from ebmkit.protocols import Flow as FlowProtocol
from ebmkit.records import InitBatch, Round

if TYPE_CHECKING:
    from ebmkit.testing import ShapeCase

__all__ = ["Flow"]


def _is_flow(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, FlowProtocol):
        raise TypeError(
            f"initializers.Flow.flow must be a flow (forward, inverse, log_prob, sample, "
            f"event_shape), e.g. @flows.RealNVP(); got {type(value).__name__}"
        )


@attrs.define(kw_only=True, eq=False)
class Flow:
    """x0 = T(z), z ~ N(0, I): chains start at the flow's samples, z kept as `latents`.

    The flow is a Learnable (found by the trainer as ``initializer.flow`` and trained by its
    own `learn`, e.g. maximum likelihood on the revised samples in CoopFlow); shared by
    identity with a sampler (a gin singleton) it is trained and saved once. The base noise
    comes from the global torch RNG, which every checkpoint saves, so a resumed run draws
    the same starts. A non-finite sample stops the round naming the flow.

    Arguments:
        flow: the flow, e.g. ``@flows.RealNVP()``.

    Example:
        >>> from ebmkit.flows import ElementwiseAffine
        >>> batch = Flow(flow=ElementwiseAffine(event_shape=(2,), loc=3.0)).sample(4)
        >>> batch.x.shape, batch.latents.shape
        (torch.Size([4, 2]), torch.Size([4, 2]))
    """

    flow: FlowProtocol = attrs.field(validator=_is_flow)

    @classmethod
    def testing_cases(cls, shape: Sequence[int]) -> list[ShapeCase]:
        """For the composability matrix: one case per registered flow, named after it, over
        that flow's first `testing_cases(shape)` instance; a flow that cannot serve `shape`
        gives a refused case with its reason. A flow whose `testing_cases` is missing or
        broken is left out here: `registered_flow_shape_cases` reports it as a failing
        entry (the matrix test has one per flow and shape)."""
        from ebmkit.testing import ShapeCase, registered_flow_shape_cases

        cases = []
        for entry in registered_flow_shape_cases(shape):
            if entry.refused is not None:
                cases.append(ShapeCase(name=entry.component, refused=entry.refused))
            elif entry.case is not None:
                cases.append(ShapeCase(name=entry.component, component=cls(flow=entry.case)))
        return cases

    def check_compatible(
        self,
        *,
        sampler: object,
        initializer: object,
        energy: object,
        shape: tuple | None,
        batch_size: int | None = None,
    ) -> None:
        """Refuse a flow built for another event shape than the data's."""
        name = getattr(self.flow, "component_name", type(self.flow).__name__)
        check_event_shape(
            self.flow,
            "initializers.Flow",
            "flow",
            shape,
            f"build the flow for the data's shape ({name}.event_shape or its dim)",
        )

    def sample(self, n: int) -> InitBatch:
        """`n` flow samples (no graph) and their base points."""
        with torch.no_grad():
            if hasattr(self.flow, "sample_with_latents"):
                x, z = self.flow.sample_with_latents(n)
            else:
                z = torch.randn(n, *self.flow.event_shape)
                x, _ = self.flow.inverse(z)
        name = getattr(self.flow, "component_name", type(self.flow).__name__)
        check_finite(
            x,
            "sample",
            f"initializers.Flow ({name})",
            "lower the flow's learning rate or clip its gradient (grad_clip)",
        )
        return InitBatch(x=x.detach(), latents=z)

    def update(self, round: Round) -> None:
        """The flow learns as a Learnable (its own `learn`), not here."""
