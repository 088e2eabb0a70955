r"""How a registered sampler offers itself to the checks: `SamplerCase` and `testing_cases()`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

from ebmkit.protocols import Sampler
from ebmkit.registry import Registry, get_registry
from ebmkit.testing.targets import LangevinMove

__all__ = ["CASES_METHOD", "RegisteredCase", "SamplerCase", "as_case", "registered_sampler_cases"]

CASES_METHOD = "testing_cases"
"""The classmethod a registered sampler defines: ``testing_cases() -> list[SamplerCase]``."""


def _is_sampler(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, type) or not isinstance(value, Sampler):
        raise TypeError(
            f"SamplerCase.sampler must be a sampler instance (init, step, sample, n_steps), "
            f"got {value!r}"
        )


@attrs.frozen(eq=False, kw_only=True)
class SamplerCase:
    """One configured sampler and the law the checks hold it to.

    The case says which of three laws applies:

    - ``exact=True``: the kernel leaves exp(−E) invariant (an MH correction). Moments and
      mode weights must match the target within `z_max` standard errors.
    - ``langevin_law=(LangevinMove(h, σ), ...)``: an unadjusted kernel that, on a Gaussian
      target, is exactly these Langevin moves per step; the Gaussian check uses its exact
      biased moments (`langevin_moments`), the mixture check the target within
      `bias_tolerance`.
    - ``bias_tolerance > 0`` alone: an unadjusted kernel with no known law, checked against
      the target with that absolute allowance (on each mean and covariance entry and each
      mixture probability) on top of the statistical tolerance. Keep its step small.

    Arguments:
        name: a short name for the case (test ids, messages), e.g. "paper" or "mh".
        sampler: the configured sampler, with step sizes suited to the unit-scale targets
            (`STANDARD_GAUSSIAN`, `STANDARD_MIXTURE`; a step near 0.1–0.2 usually fits).
        exact: the kernel is exact for exp(−E).
        langevin_law: the unadjusted moves one step makes on a Gaussian target.
        bias_tolerance: absolute bias allowed for an unadjusted kernel (0 for exact ones).

    Example:
        >>> from ebmkit.samplers.langevin import Langevin
        >>> case = SamplerCase(
        ...     name="ula", sampler=Langevin(step_size=0.05), exact=False,
        ...     langevin_law=(LangevinMove(step_size=0.05),), bias_tolerance=0.05,
        ... )
        >>> case.label
        'Langevin/ula'
    """

    name: str = attrs.field(validator=attrs.validators.min_len(1))
    sampler: Sampler = attrs.field(validator=_is_sampler)
    exact: bool = attrs.field(validator=attrs.validators.instance_of(bool))
    langevin_law: tuple[LangevinMove, ...] = attrs.field(
        default=(),
        converter=tuple,
        validator=attrs.validators.deep_iterable(attrs.validators.instance_of(LangevinMove)),
    )
    bias_tolerance: float = attrs.field(
        default=0.0, converter=float, validator=[attrs.validators.ge(0.0)]
    )

    def __attrs_post_init__(self) -> None:
        if self.exact and (self.langevin_law or self.bias_tolerance):
            raise ValueError(
                f"SamplerCase {self.name!r}: an exact case is held to the target itself; "
                f"drop langevin_law / bias_tolerance or set exact=False"
            )
        if not self.exact and not (self.langevin_law or self.bias_tolerance > 0):
            raise ValueError(
                f"SamplerCase {self.name!r}: an unadjusted case needs its law on a Gaussian "
                f"(langevin_law=...) or a bias_tolerance > 0 (or exact=True if it is exact)"
            )
        if not math.isfinite(self.bias_tolerance):
            raise ValueError(f"SamplerCase {self.name!r}: bias_tolerance must be finite")

    @property
    def label(self) -> str:
        """``<sampler class>/<case name>``, for messages."""
        return f"{type(self.sampler).__name__}/{self.name}"


def as_case(case: SamplerCase | Sampler) -> SamplerCase:
    """`case` itself, or a bare sampler as an exact case named "sampler"."""
    if isinstance(case, SamplerCase):
        return case
    return SamplerCase(name="sampler", sampler=case, exact=True)


@attrs.frozen(kw_only=True)
class RegisteredCase:
    """A case of a registered sampler, or why that sampler offers none (for parametrised tests).

    Arguments:
        sampler: the registered name.
        plugin: the plugin that registered it.
        case: the case, or None when the sampler offers none.
        problem: why there is no case (None when there is one).
    """

    sampler: str
    plugin: str
    case: SamplerCase | None = None
    problem: str | None = None

    @property
    def id(self) -> str:
        """A test id: ``<registered name>-<case name>``."""
        return f"{self.sampler}-{self.case.name if self.case is not None else 'no-cases'}"

    def get(self) -> SamplerCase:
        """The case; raises AssertionError saying what the sampler must offer when it has none."""
        if self.case is None:
            raise AssertionError(self.problem)
        return self.case


def _problem(name: str, plugin: str, what: str) -> str:
    return (
        f"registered sampler {name!r} (plugin {plugin!r}) {what}; every registered sampler "
        f"offers a classmethod `{CASES_METHOD}()` returning a list of ebmkit.testing."
        f"SamplerCase (a configured instance and whether it is exact), so the core's sampler "
        f"contract test covers it (docs/plugins.md, 'Testing your sampler')"
    )


def _cases_of(name: str, plugin: str, factory: object) -> list[RegisteredCase]:
    def missing(what: str) -> list[RegisteredCase]:
        return [RegisteredCase(sampler=name, plugin=plugin, problem=_problem(name, plugin, what))]

    offer = getattr(factory, CASES_METHOD, None)
    if offer is None:
        return missing("offers no testing cases")
    try:
        cases: Sequence[object] = list(offer())
    except Exception as error:  # a broken method is reported in the test, not at collection
        return missing(f"raised {error!r} from {CASES_METHOD}()")
    if not cases:
        return missing(f"returned no cases from {CASES_METHOD}()")
    found = []
    for case in cases:
        if not isinstance(case, SamplerCase):
            return missing(f"returned a {type(case).__name__} from {CASES_METHOD}()")
        if isinstance(factory, type) and not isinstance(case.sampler, factory):
            return missing(
                f"returned a case {case.name!r} whose sampler is a "
                f"{type(case.sampler).__name__}, not a {factory.__name__} (an inherited "
                f"{CASES_METHOD}? define it on {factory.__name__})"
            )
        found.append(RegisteredCase(sampler=name, plugin=plugin, case=case))
    return found


def registered_sampler_cases(registry: Registry | None = None) -> list[RegisteredCase]:
    """Every registered sampler's cases, in registry order (one "no-cases" entry for a sampler
    that offers none, so a parametrised test fails naming it instead of skipping it).

    Arguments:
        registry: the registry to read (default: the process-wide one, plugins loaded).
    """
    registry = get_registry() if registry is None else registry
    found: list[RegisteredCase] = []
    for component in registry.components("sampler"):
        found.extend(_cases_of(component.name, component.plugin, component.factory))
    return found
