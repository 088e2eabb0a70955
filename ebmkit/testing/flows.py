r"""Checks every registered flow passes (a plugin's flow tests call them too), and its cases.

**The convention for registered flows.** Every registered flow (core or plugin) offers a
classmethod ``testing_cases(shape=None) -> list`` of small configured instances (an
`ebmkit.Flow`, usually a `FlowModule`; a few coordinates, or a small image, so the autograd
Jacobian is cheap), seeded without touching the global RNG and away from the identity (a
fresh flow started at the identity would pass a wrong log-det). ``tests/test_flows.py`` reads
the registry (`registered_flow_cases`, which calls it with no shape) and runs every check
below on every case; a registered flow without cases fails there with a message saying what
to add. Given a `shape`, the method returns instances of that event shape for the
composability matrix, or raises `ebmkit.compatibility.IncompatibleError` saying why it cannot
serve it (see `ebmkit.testing.shape_cases`).

The checks (each raises AssertionError with the numbers, and works on copies: the flow
given is left as it was):

- `check_flow_invertible`: x = T(z) maps back to z, forward(T(z)) and inverse(z) have
  opposite log-dets, shapes are (B, *event_shape) and (B,).
- `check_flow_logdet`: both log-dets against the autograd Jacobian's log|det| (float64
  where the flow converts), and ``log_prob(x) = log N(z; 0, I) + log|det ∂z/∂x|``.
- `check_flow_save_load`: after one `learn` step, the state dict through `torch.save` and
  `torch.load` into a scrambled copy gives the same outputs bit for bit, and a further
  `learn` step continues identically (optimizer state and buffers included).
- `check_flow_sampling_reproducible`: the same generator seed gives the same samples bit for
  bit, another seed differs, and the global RNG is untouched.

A flow built for any shape (``event_shape=None``) is checked on `ANY_SHAPE`.

Example:
    >>> from ebmkit.flows import Affine
    >>> flow = Affine(dim=2, loc=1.0, scale=2.0)
    >>> check_flow_logdet(flow) < 1e-10
    True
    >>> check_flow_sampling_reproducible(flow)
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Sequence
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from ebmkit.protocols import Flow
from ebmkit.records import ChainState, InitBatch, Round, SampleResult
from ebmkit.registry import Registry, get_registry

__all__ = [
    "ANY_SHAPE",
    "FLOW_CASES_METHOD",
    "RegisteredFlowCase",
    "check_flow_invertible",
    "check_flow_logdet",
    "check_flow_sampling_reproducible",
    "check_flow_save_load",
    "flow_round",
    "registered_flow_cases",
]

FLOW_CASES_METHOD = "testing_cases"
"""The classmethod a registered flow defines: ``testing_cases(shape=None) -> list[FlowModule]``
(called here with no shape)."""

ANY_SHAPE = (3, 4, 4)
"""The event shape the checks use for a flow built for any shape (``event_shape=None``)."""

MAX_JACOBIAN_SIZE = 256
"""`check_flow_logdet` builds D × D Jacobians: cases keep D = prod(event_shape) at most this."""


def _name(flow: object) -> str:
    return getattr(flow, "component_name", type(flow).__name__)


def _shape(flow: Flow, event_shape: Sequence[int] | None) -> tuple[int, ...]:
    if flow.event_shape is not None:
        return tuple(flow.event_shape)
    return tuple(ANY_SHAPE if event_shape is None else event_shape)


def _dtype(flow: object) -> torch.dtype:
    if isinstance(flow, nn.Module):
        for tensor in (*flow.parameters(), *flow.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
    return torch.get_default_dtype()


def _copy(flow: Flow, dtype: torch.dtype | None) -> Flow:
    """A deep copy, moved to `dtype` when the flow is a module (else as it is)."""
    duplicate = copy.deepcopy(flow)
    if dtype is not None and isinstance(duplicate, nn.Module):
        duplicate.to(dtype)
    return duplicate


def _base_points(flow: Flow, n: int, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.randn((n, *shape), generator=generator, dtype=_dtype(flow))


def _sample(flow: Flow, n: int, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    if flow.event_shape is None:  # a flow for any shape cannot sample(n) alone
        return flow.inverse(_base_points(flow, n, shape, generator))[0]
    return flow.sample(n, generator=generator)


def _max_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def check_flow_invertible(
    flow: Flow,
    *,
    n: int = 16,
    seed: int = 0,
    event_shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = torch.float64,
    atol: float | None = None,
) -> float:
    """z → x = inverse(z) → forward(x) gives z back, and the two log-dets cancel.

    Arguments:
        flow: the flow (left unchanged: the check works on a copy in `dtype`).
        n: how many base points (drawn from a generator seeded with `seed`).
        event_shape: the shape for a flow built for any shape (default `ANY_SHAPE`).
        dtype: the precision of the check (None: the flow's own).
        atol: the largest error allowed (default 1e-6 in float64, 1e-3 otherwise).

    Returns:
        The largest error seen (in z, x or the log-det sum).
    """
    flow = _copy(flow, dtype)
    shape = _shape(flow, event_shape)
    atol = (1e-6 if _dtype(flow) == torch.float64 else 1e-3) if atol is None else atol
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = _base_points(flow, n, shape, generator)
        x, inverse_logdet = flow.inverse(z)
        z_back, forward_logdet = flow.forward(x)
        x_again, _ = flow.inverse(z_back)
    name = _name(flow)
    for what, value, expected in (
        ("inverse(z)", x, (n, *shape)),
        ("forward(x)", z_back, (n, *shape)),
        ("inverse's log-det", inverse_logdet, (n,)),
        ("forward's log-det", forward_logdet, (n,)),
    ):
        if tuple(value.shape) != expected:
            raise AssertionError(f"{name}: {what} has shape {tuple(value.shape)}, not {expected}")
        if not bool(torch.isfinite(value).all()):
            raise AssertionError(f"{name}: {what} is not finite on standard normal base points")
    errors = {
        "|forward(inverse(z)) − z|": _max_error(z_back, z),
        "|inverse(forward(x)) − x|": _max_error(x_again, x),
        "|log|det ∂z/∂x| + log|det ∂x/∂z||": _max_error(forward_logdet, -inverse_logdet),
    }
    worst = max(errors.values())
    if worst > atol:
        found = ", ".join(f"{what} = {error:.3g}" for what, error in errors.items())
        raise AssertionError(f"{name} is not invertible within {atol:g}: {found}")
    return worst


def _jacobian_logdet(map_one: Any, point: Tensor) -> Tensor:
    shape = point.shape

    def flat(v: Tensor) -> Tensor:
        return map_one(v.reshape(1, *shape))[0].reshape(-1)

    jacobian = torch.autograd.functional.jacobian(flat, point.reshape(-1))
    return torch.linalg.slogdet(jacobian).logabsdet


def check_flow_logdet(
    flow: Flow,
    *,
    n: int = 4,
    seed: int = 0,
    event_shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = torch.float64,
    atol: float | None = None,
) -> float:
    """Both log-dets against log|det| of the autograd Jacobian, at flow samples and their
    base points; and log_prob = log N(z) + log|det ∂z/∂x|.

    Arguments:
        flow: the flow (left unchanged: the check works on a copy in `dtype`), with at most
            `MAX_JACOBIAN_SIZE` coordinates per sample.
        n: how many points.
        event_shape: the shape for a flow built for any shape (default `ANY_SHAPE`).
        dtype: the precision of the check (None: the flow's own).
        atol: the largest error allowed (default 1e-6 in float64, 1e-2 otherwise).

    Returns:
        The largest |log-det − autograd log|det J||.
    """
    flow = _copy(flow, dtype)
    shape = _shape(flow, event_shape)
    size = int(torch.Size(shape).numel())
    name = _name(flow)
    if size > MAX_JACOBIAN_SIZE:
        raise ValueError(
            f"check_flow_logdet builds {size}×{size} Jacobians for {name}; give it a case "
            f"with at most {MAX_JACOBIAN_SIZE} coordinates per sample"
        )
    atol = (1e-6 if _dtype(flow) == torch.float64 else 1e-2) if atol is None else atol
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = _base_points(flow, n, shape, generator)
        x, inverse_logdet = flow.inverse(z)
        z_of_x, forward_logdet = flow.forward(x)
        log_prob = flow.log_prob(x)
    forward_autograd = torch.stack(
        [_jacobian_logdet(lambda v: flow.forward(v)[0], x[i]) for i in range(n)]
    )
    inverse_autograd = torch.stack(
        [_jacobian_logdet(lambda v: flow.inverse(v)[0], z[i]) for i in range(n)]
    )
    flat = z_of_x.flatten(1)
    base = -0.5 * (flat.square().sum(1) + flat.shape[1] * math.log(2 * math.pi))
    errors = {
        "forward": _max_error(forward_logdet, forward_autograd),
        "inverse": _max_error(inverse_logdet, inverse_autograd),
        "log_prob": _max_error(log_prob, base + forward_logdet),
    }
    worst = max(errors.values())
    if worst > atol:
        raise AssertionError(
            f"{name}'s log-det disagrees with the autograd Jacobian (allowed {atol:g}): "
            f"forward max |error| = {errors['forward']:.3g} (says {forward_logdet.tolist()}, "
            f"autograd {forward_autograd.tolist()}); inverse {errors['inverse']:.3g}; "
            f"log_prob − (log N(z) + log-det) {errors['log_prob']:.3g}"
        )
    return worst


class _StandardNormalEnergy(nn.Module):
    """E(x) = |x|²/2, the energy a check's Round carries (for a reverse-KL mix)."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x.flatten(1).square().sum(1)


def flow_round(x: Tensor, *, index: int = 1, energy: nn.Module | None = None) -> Round:
    """A Round whose data batch and chain samples are both `x` (what any `fit_on` fits),
    with `energy` (default |x|²/2, the standard normal's) for a reverse-KL mix.

    Example:
        >>> from ebmkit.flows import Affine
        >>> flow = Affine(dim=2, learning_rate=0.1)
        >>> sorted(flow.learn(flow_round(torch.randn(8, 2) + 3.0)))
        ['forward_kl', 'loss']
    """
    energy = _StandardNormalEnergy() if energy is None else energy
    with torch.no_grad():
        energies = energy(x)
    result = SampleResult(
        x=x,
        state=ChainState(x=x, energy=None, grad=None),
        acceptance_rate=None,
        n_grad_evals=0,
        energy_trace=torch.zeros(0),
        step_size=torch.tensor(0.0),
    )
    return Round(
        index=index,
        x_data=x,
        init=InitBatch(x=x),
        result=result,
        energy_data=energies,
        energy_model=energies,
        energy=energy,
    )


def _scramble(flow: nn.Module, seed: int) -> None:
    """Change every parameter and buffer, so a load that misses one shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in (*flow.parameters(), *flow.buffers()):
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
                tensor.add_(0.5 * noise.to(tensor.device))
            elif tensor.dtype == torch.bool:
                tensor.logical_not_()
            else:
                tensor.add_(1)


def _through_disk(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two nested state dicts differ (tensors bit for bit)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        same = isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape
        return [] if same and torch.equal(a, b) else [path or "<root>"]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path} (keys {sorted(map(str, a))} vs {sorted(map(str, b))})"]
        return [d for key in a for d in _differences(a[key], b[key], f"{path}/{key}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        return [
            d
            for i, (u, v) in enumerate(zip(a, b, strict=True))
            for d in _differences(u, v, f"{path}/{i}")
        ]
    return [] if a == b else [path or "<root>"]


def _learn(flow: Any, round: Round, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):  # learn may draw (dequantisation noise)
        torch.manual_seed(seed)
        flow.learn(round)


def check_flow_save_load(
    flow: Flow, *, n: int = 16, seed: int = 0, event_shape: Sequence[int] | None = None
) -> None:
    """One `learn` step, `state_dict` through `torch.save`/`torch.load` into a scrambled copy:
    the same forward, inverse and log_prob bit for bit, the same state (optimizer included),
    and a further `learn` step on both gives the same parameters and buffers.

    The flow must be a Learnable module (`learn`, `state_dict`, `load_state_dict`), e.g. a
    `FlowModule`. It is left unchanged (the check works on copies), and so is the global RNG.

    Arguments:
        flow: the flow.
        n: the batch `learn` fits (flow samples, seeded by `seed`).
        event_shape: the shape for a flow built for any shape (default `ANY_SHAPE`).
    """
    name = _name(flow)
    if not isinstance(flow, nn.Module) or not hasattr(flow, "learn"):
        raise AssertionError(f"{name} is not a Learnable module (nn.Module with learn(round))")
    trained = copy.deepcopy(flow)
    fresh = copy.deepcopy(flow)
    _scramble(fresh, seed + 1)
    shape = _shape(flow, event_shape)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        points = _sample(trained, n, shape, generator).detach()
        base = _base_points(trained, n, shape, generator)
    _learn(trained, flow_round(points, index=1), seed)
    saved = trained.state_dict()
    fresh.load_state_dict(_through_disk(saved))
    differences = _differences(saved, fresh.state_dict())
    if differences:
        raise AssertionError(f"{name}: a reloaded copy's state differs at {differences}")
    with torch.no_grad():
        for what, call in (
            ("forward", lambda f: f.forward(points)),
            ("inverse", lambda f: f.inverse(base)),
            ("log_prob", lambda f: (f.log_prob(points),)),
        ):
            for a, b in zip(call(trained), call(fresh), strict=True):
                if not torch.equal(a, b):
                    raise AssertionError(
                        f"{name}: the reloaded copy's {what} differs from the saved flow's "
                        f"(max |difference| {_max_error(a, b):.3g})"
                    )
    later = flow_round(points.flip(0) * 0.9, index=2)
    _learn(trained, later, seed + 2)
    _learn(fresh, later, seed + 2)
    differences = _differences(trained.state_dict(), fresh.state_dict())
    if differences:
        raise AssertionError(
            f"{name}: after one more learn step the reloaded copy differs at {differences} "
            f"(state that is not in state_dict, e.g. a plain attribute or the optimizer's)"
        )


def check_flow_sampling_reproducible(
    flow: Flow, *, n: int = 8, seed: int = 0, event_shape: Sequence[int] | None = None
) -> None:
    """`sample(n, generator=...)`: the same seed gives the same samples bit for bit, another
    seed differs, and the global torch RNG is not drawn from.

    Arguments:
        flow: the flow (a flow for any shape is sampled as a kernel does: base noise of
            `event_shape`, default `ANY_SHAPE`, through `inverse`).
        n: how many samples.
        seed: the first generator's seed (the second uses seed + 1).
    """
    name = _name(flow)
    shape = _shape(flow, event_shape)
    before = torch.get_rng_state()
    with torch.no_grad():
        first = _sample(flow, n, shape, torch.Generator().manual_seed(seed))
        again = _sample(flow, n, shape, torch.Generator().manual_seed(seed))
        other = _sample(flow, n, shape, torch.Generator().manual_seed(seed + 1))
    if not torch.equal(torch.get_rng_state(), before):
        raise AssertionError(
            f"{name}.sample drew from the global torch RNG; draw the base noise with "
            f"torch.randn(..., generator=generator) (FlowModule.base_noise), never through "
            f"zuko's .sample/.rsample"
        )
    if tuple(first.shape) != (n, *shape):
        raise AssertionError(f"{name}.sample({n}) has shape {tuple(first.shape)}")
    if not torch.equal(first, again):
        raise AssertionError(
            f"{name}.sample gave different samples for the same generator seed {seed} "
            f"(max |difference| {_max_error(first, again):.3g})"
        )
    if torch.equal(first, other):
        raise AssertionError(
            f"{name}.sample ignores the generator: seeds {seed} and {seed + 1} agree"
        )


@attrs.frozen(kw_only=True)
class RegisteredFlowCase:
    """A case of a registered flow, or why that flow offers none (for parametrised tests).

    Arguments:
        flow: the registered name.
        plugin: the plugin that registered it.
        index: the case's position in `testing_cases()`.
        case: the configured flow, or None when the flow offers none.
        problem: why there is no case (None when there is one).
    """

    flow: str
    plugin: str
    index: int = 0
    case: Any = None
    problem: str | None = None

    @property
    def id(self) -> str:
        """A test id: ``<registered name>-<index>``, or ``<name>-no-cases``."""
        return f"{self.flow}-{self.index if self.case is not None else 'no-cases'}"

    def get(self) -> Any:
        """The case; raises AssertionError saying what the flow must offer when it has none."""
        if self.case is None:
            raise AssertionError(self.problem)
        return self.case


def _problem(name: str, plugin: str, what: str) -> str:
    return (
        f"registered flow {name!r} (plugin {plugin!r}) {what}; every registered flow offers a "
        f"classmethod `{FLOW_CASES_METHOD}()` returning a list of small configured instances "
        f"(seeded, away from the identity), so the core's flow contract test runs "
        f"ebmkit.testing's flow checks on it (docs/plugins.md, 'Adding a flow')"
    )


def _cases_of(name: str, plugin: str, factory: object) -> list[RegisteredFlowCase]:
    def missing(what: str) -> list[RegisteredFlowCase]:
        return [RegisteredFlowCase(flow=name, plugin=plugin, problem=_problem(name, plugin, what))]

    offer = getattr(factory, FLOW_CASES_METHOD, None)
    if offer is None:
        return missing("offers no testing cases")
    try:
        cases = list(offer())
    except Exception as error:  # a broken method is reported in the test, not at collection
        return missing(f"raised {error!r} from {FLOW_CASES_METHOD}()")
    if not cases:
        return missing(f"returned no cases from {FLOW_CASES_METHOD}()")
    found = []
    for index, case in enumerate(cases):
        if isinstance(case, type) or not isinstance(case, Flow):
            return missing(
                f"returned {case!r} from {FLOW_CASES_METHOD}(), not a flow instance (forward, "
                f"inverse, log_prob, sample, event_shape, exact_log_prob)"
            )
        if isinstance(factory, type) and not isinstance(case, factory):
            return missing(
                f"returned a {type(case).__name__}, not a {factory.__name__} (an inherited "
                f"{FLOW_CASES_METHOD}? define it on {factory.__name__})"
            )
        found.append(RegisteredFlowCase(flow=name, plugin=plugin, index=index, case=case))
    return found


def registered_flow_cases(registry: Registry | None = None) -> list[RegisteredFlowCase]:
    """Every registered flow's cases, in registry order (one "no-cases" entry for a flow that
    offers none, so a parametrised test fails naming it instead of skipping it).

    Arguments:
        registry: the registry to read (default: the process-wide one, plugins loaded).
    """
    registry = get_registry() if registry is None else registry
    found: list[RegisteredFlowCase] = []
    for component in registry.components("flow"):
        found.extend(_cases_of(component.name, component.plugin, component.factory))
    return found
