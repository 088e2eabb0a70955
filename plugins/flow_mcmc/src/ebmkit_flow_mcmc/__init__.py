r"""Adaptive flow-MCMC (Grenioux, Moulines & Gabrié, arXiv:2306.00684) as an ebmkit plugin:
independence MH and i-SIR moves with a normalizing-flow proposal, their alternation with local
moves, and neutra-MCMC in the flow's latent space."""

from ebmkit_flow_mcmc.densities import LATENT, LOG_PROB, TiltedEnergy
from ebmkit_flow_mcmc.flow_mcmc import GLOBAL_MOVES, FlowMCMC
from ebmkit_flow_mcmc.imh import FlowIMH
from ebmkit_flow_mcmc.isir import ISIR, pick_by_weight
from ebmkit_flow_mcmc.neutra import LatentEnergy, NeutraMCMC

__version__ = "0.1.0"

__all__ = [
    "GLOBAL_MOVES",
    "ISIR",
    "LATENT",
    "LOG_PROB",
    "FlowIMH",
    "FlowMCMC",
    "LatentEnergy",
    "NeutraMCMC",
    "TiltedEnergy",
    "pick_by_weight",
]
