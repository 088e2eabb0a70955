r"""ebmkit-hmc: Hamiltonian Monte Carlo for ebmkit, a third-party plugin example
(`samplers.HMC`, registered through the `ebmkit` entry-point group)."""

from ebmkit_hmc.adaptation import DualAveraging
from ebmkit_hmc.kernel import HMC, kinetic_energy

__all__ = ["HMC", "DualAveraging", "kinetic_energy"]
