r"""Normalizing flows, a core kind (gin module ``flows``) shared by CoopFlow, flow-MCMC and CPMLA.

- `base`: `FlowModule`, the base every flow derives from (density, sampling, forward KL).
- `affine`: `Affine` (full covariance) and `ElementwiseAffine` (any shape).
"""

from __future__ import annotations

from ebmkit.flows.affine import Affine, ElementwiseAffine
from ebmkit.flows.base import FIT_ON, FlowModule, check_finite, standard_normal_log_prob
from ebmkit.registry import Registry

__all__ = [
    "FIT_ON",
    "Affine",
    "ElementwiseAffine",
    "FlowModule",
    "check_finite",
    "register_flows",
    "standard_normal_log_prob",
]


def register_flows(registry: Registry) -> None:
    """Every built-in flow, as ``flows.<Name>``."""
    registry.add("flow", "Affine", Affine)
    registry.add("flow", "ElementwiseAffine", ElementwiseAffine)
