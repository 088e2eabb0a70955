r"""STANLEY / AniLA (Karimi, Xie & Li, arXiv:2310.12667) as an ebmkit plugin."""

from ebmkit_stanley.kernel import (
    LEGACY_NOISE_SCALE,
    REDUCTIONS,
    Stanley,
    anisotropic_step_size,
    gradient_magnitude,
    metropolis_log_ratio,
    proposal_log_prob,
    proposal_mean,
)
from ebmkit_stanley.toynet import ToyNet

__version__ = "0.1.0"

__all__ = [
    "LEGACY_NOISE_SCALE",
    "REDUCTIONS",
    "Stanley",
    "ToyNet",
    "anisotropic_step_size",
    "gradient_magnitude",
    "metropolis_log_ratio",
    "proposal_log_prob",
    "proposal_mean",
]
