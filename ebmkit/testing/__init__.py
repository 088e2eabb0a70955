r"""Exact-target checks every registered sampler passes; a plugin's tests call them too.

Each check runs many independent chains on a tiny target with a known law, looks at the
final states (i.i.d. across chains, so no autocorrelation to correct for) and raises
AssertionError with every number (z-scores, weights, crossings, what differed) when the
sampler misses. Statistical tolerances are `Z_MAX` = 5 standard errors; every check takes
about a second or less on one CPU core.

The checks:

- `check_gaussian_moments`: from a far start, the mean and covariance of a correlated
  Gaussian (`STANDARD_GAUSSIAN`), or an unadjusted kernel's exact biased law.
- `check_mixture`: on 0.25·N(−1, .45²) + 0.75·N(1, .45²) (`STANDARD_MIXTURE`), chains started
  in reversed proportions cross between the modes (at least 2 crossings per chain) and reach
  the mode weights, P(X < t) at both modes, and the barrier's mass P(|X| < 0.3), which a
  wrong MH ratio (MALA without the backward proposal density q(x|y)) fills: z ≈ +8 to +13
  where the CDF points alone gave 4–7.
- `check_moment_power`: the moment check fails unadjusted Langevin at a step where its O(h)
  bias is measurable, and passes it against its exact law (`langevin_moments`; the stationary
  covariance in closed form: `ula_stationary_covariance`).
- `check_reproducible`: the same `torch.Generator` seed gives the same chains bit for bit,
  another seed differs, the global RNG is untouched.
- `check_continuation`: 2N steps equal N steps plus N continued through
  `initializers.Persistent` (and its checkpoint), bit for bit, kernel-owned state included;
  an `owned` entry the check plants (`CARRIED_OWNED`) must be carried, so an `init` that
  ignores `previous` fails even in a kernel that owns nothing.
- `check_contract`: shapes, no NaN, `n_grad_evals` equal to the gradients really taken, no
  graph unless `differentiable=True`, and a lone `step` hands on `owned` entries it does
  not own.

**The convention for registered samplers.** Every registered sampler (core or plugin) offers
a classmethod ``testing_cases() -> list[SamplerCase]``: configured instances, each saying
whether it is exact (MH-corrected, held to the target) or unadjusted (held to its exact law
on a Gaussian, `langevin_law`, or to the target within a stated `bias_tolerance`). The core
test ``tests/test_sampler_contract.py`` reads the registry (`registered_sampler_cases`) and
runs every check on every case, so a new plugin's kernel is covered without editing core
tests; a registered sampler without cases fails there with a message saying what to add.
Define the method on the registered class itself (an inherited one is refused), and import
`ebmkit.testing` inside it (the module needs the samplers, not the other way round).

**Which check guards what.** A wrong MH ratio: `check_gaussian_moments` (covariance along the
principal axes) and `check_mixture` (the barrier's mass); an unadjusted bias: both, against
the case's law or tolerance; no mixing: `check_mixture`'s crossings and the Gaussian's far
start; RNG discipline: `check_reproducible`; state carried across rounds:
`check_continuation`; costs, shapes, graphs and foreign `owned` entries: `check_contract`.
A plugin's tests show each fails a deliberately wrong variant of its kernel
(docs/writing-a-plugin.md).

Example:
    >>> from ebmkit.samplers.mala import MALA
    >>> case = SamplerCase(name="mala", sampler=MALA(step_size=0.2), exact=True)
    >>> check_reproducible(case)
    >>> check_continuation(case)
    >>> report = check_gaussian_moments(case, n_chains=1000, n_steps=100)
    >>> report.max_z < Z_MAX
    True
"""

from ebmkit.testing.cases import (
    CASES_METHOD,
    RegisteredCase,
    SamplerCase,
    as_case,
    registered_sampler_cases,
)
from ebmkit.testing.contract import (
    CARRIED_OWNED,
    FOREIGN_OWNED,
    GradientCounter,
    check_continuation,
    check_contract,
    check_reproducible,
    state_differences,
)
from ebmkit.testing.fixtures import FLOWERS_COLOURS, finished_round, write_flowers102
from ebmkit.testing.flows import (
    ANY_SHAPE,
    FLOW_CASES_METHOD,
    RegisteredFlowCase,
    check_flow_invertible,
    check_flow_logdet,
    check_flow_sampling_reproducible,
    check_flow_save_load,
    flow_round,
    registered_flow_cases,
)
from ebmkit.testing.shape_cases import (
    SHAPE_CASES_METHOD,
    RegisteredShapeCase,
    ShapeCase,
    registered_flow_shape_cases,
    registered_initializer_cases,
)
from ebmkit.testing.statistics import (
    Z_MAX,
    MixtureReport,
    MomentReport,
    check_gaussian_moments,
    check_mixture,
    check_moment_power,
    gaussian_moment_report,
)
from ebmkit.testing.targets import (
    FAR_START,
    STANDARD_GAUSSIAN,
    STANDARD_MIXTURE,
    GaussianTarget,
    LangevinMove,
    MixtureTarget,
    langevin_moments,
    ula_stationary_covariance,
)

__all__ = [
    "ANY_SHAPE",
    "CARRIED_OWNED",
    "CASES_METHOD",
    "FAR_START",
    "FLOWERS_COLOURS",
    "FLOW_CASES_METHOD",
    "FOREIGN_OWNED",
    "SHAPE_CASES_METHOD",
    "STANDARD_GAUSSIAN",
    "STANDARD_MIXTURE",
    "Z_MAX",
    "GaussianTarget",
    "GradientCounter",
    "LangevinMove",
    "MixtureReport",
    "MixtureTarget",
    "MomentReport",
    "RegisteredCase",
    "RegisteredFlowCase",
    "RegisteredShapeCase",
    "SamplerCase",
    "ShapeCase",
    "as_case",
    "check_continuation",
    "check_contract",
    "check_flow_invertible",
    "check_flow_logdet",
    "check_flow_sampling_reproducible",
    "check_flow_save_load",
    "check_gaussian_moments",
    "check_mixture",
    "check_moment_power",
    "check_reproducible",
    "finished_round",
    "flow_round",
    "gaussian_moment_report",
    "langevin_moments",
    "registered_flow_cases",
    "registered_flow_shape_cases",
    "registered_initializer_cases",
    "registered_sampler_cases",
    "state_differences",
    "ula_stationary_covariance",
    "write_flowers102",
]
