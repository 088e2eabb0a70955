r"""Normalizing flows, a core kind (gin module ``flows``) shared by CoopFlow, flow-MCMC and CPMLA.

- `base`: `FlowModule`, the base every flow derives from (density, sampling, forward KL).
- `affine`: `Affine` (full covariance) and `ElementwiseAffine` (any shape).
- `zuko_flows`: zuko's `RealNVP`, `NSF` and `MAF` (vectors), started near the identity.
- `glow`: `Glow`, a small multi-scale image flow (dequantisation and logit in its density).

Every registered flow offers a classmethod ``testing_cases()`` (small configured instances)
that ``ebmkit.testing``'s flow checks run on (see `ebmkit.testing.flows`).
"""

from __future__ import annotations

from ebmkit.flows.affine import Affine, ElementwiseAffine
from ebmkit.flows.base import FIT_ON, FlowModule, check_finite, standard_normal_log_prob
from ebmkit.flows.glow import Glow
from ebmkit.flows.zuko_flows import MAF, NSF, RealNVP, ZukoFlow
from ebmkit.registry import Registry

__all__ = [
    "FIT_ON",
    "MAF",
    "NSF",
    "Affine",
    "ElementwiseAffine",
    "FlowModule",
    "Glow",
    "RealNVP",
    "ZukoFlow",
    "check_finite",
    "register_flows",
    "standard_normal_log_prob",
]


def register_flows(registry: Registry) -> None:
    """Every built-in flow, as ``flows.<Name>``."""
    registry.add("flow", "Affine", Affine)
    registry.add("flow", "ElementwiseAffine", ElementwiseAffine)
    registry.add("flow", "RealNVP", RealNVP)
    registry.add("flow", "NSF", NSF)
    registry.add("flow", "MAF", MAF)
    registry.add("flow", "Glow", Glow)
