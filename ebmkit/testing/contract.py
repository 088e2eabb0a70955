r"""The sampler contract: same seed → same chains, N + N continued = 2N, shapes, counts, graphs."""

from __future__ import annotations

import io

import attrs
import torch
from torch import Tensor, nn

from ebmkit.initializers.persistent import Persistent
from ebmkit.protocols import Energy, Sampler
from ebmkit.records import ChainState, InitBatch, Round, SampleResult, StepInfo
from ebmkit.testing.cases import SamplerCase, as_case
from ebmkit.testing.fixtures import finished_round
from ebmkit.testing.targets import F64, STANDARD_GAUSSIAN

__all__ = [
    "CARRIED_OWNED",
    "FOREIGN_OWNED",
    "GradientCounter",
    "check_continuation",
    "check_contract",
    "check_reproducible",
    "state_differences",
]

FOREIGN_OWNED = "ebmkit.testing/foreign"
"""An `owned` key no kernel uses: a lone `step` must hand it on unchanged."""

CARRIED_OWNED = "ebmkit.testing/carried"
"""An `owned` key `check_continuation` plants in the state a chain continues from: `init`
must keep it from `previous` and every step hand it on, so an `init` that ignores `previous`
fails even in a kernel that owns nothing itself."""


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    """Bit-for-bit equal (NaN equal to NaN), same shape and dtype; or both None."""
    if a is None or b is None:
        return a is None and b is None
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def _describe(a: Tensor | None, b: Tensor | None) -> str:
    if a is None or b is None:
        return f"{'None' if a is None else 'a tensor'} vs {'None' if b is None else 'a tensor'}"
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"{tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
    differ = ~((a == b) | (a.isnan() & b.isnan())) if a.is_floating_point() else a != b
    gap = (a.double() - b.double()).abs().nan_to_num(nan=float("inf"))[differ].max().item()
    return f"{int(differ.sum())} of {a.numel()} entries differ, by up to {gap:.3g}"


def state_differences(a: ChainState, b: ChainState) -> list[str]:
    """What differs between two chain states, bit for bit: x, energy, grad, step_size and every
    `extras` and `owned` entry (a key present in one only counts too). Empty when identical."""
    found = []
    for name in ("x", "energy", "grad", "step_size"):
        if not _same(getattr(a, name), getattr(b, name)):
            found.append(f"{name}: {_describe(getattr(a, name), getattr(b, name))}")
    for group in ("extras", "owned"):
        left, right = getattr(a, group), getattr(b, group)
        for key in sorted(set(left) | set(right)):
            if key not in left or key not in right:
                side = "second" if key in right else "first"
                found.append(f"{group}[{key!r}] only in the {side}")
            elif not _same(left[key], right[key]):
                found.append(f"{group}[{key!r}]: {_describe(left[key], right[key])}")
    return found


def _result_differences(a: SampleResult, b: SampleResult) -> list[str]:
    found = state_differences(a.state, b.state)
    for name in ("x", "acceptance_rate", "step_size", "energy_trace"):
        if not _same(getattr(a, name), getattr(b, name)):
            found.append(f"result.{name}: {_describe(getattr(a, name), getattr(b, name))}")
    for name in ("n_grad_evals", "n_energy_evals", "n_flow_evals"):
        if getattr(a, name) != getattr(b, name):
            found.append(f"result.{name}: {getattr(a, name)} vs {getattr(b, name)}")
    for key in sorted(set(a.stats) | set(b.stats)):
        if not _same(a.stats.get(key), b.stats.get(key)):
            found.append(f"result.stats[{key!r}]: {_describe(a.stats.get(key), b.stats.get(key))}")
    return found


def _spread_start(n_chains: int, seed: int) -> Tensor:
    """Starting points around the standard Gaussian, some far out: N((1, −0.5), 4·I)."""
    generator = torch.Generator().manual_seed(seed)
    return STANDARD_GAUSSIAN.mean + 2 * torch.randn(n_chains, 2, generator=generator, dtype=F64)


def check_reproducible(
    case: SamplerCase | Sampler, *, n_chains: int = 64, n_steps: int = 20, seed: int = 0
) -> None:
    """The same `torch.Generator` seed gives the same chains bit for bit; another seed differs.

    Two runs of `sample` on `STANDARD_GAUSSIAN` with generators seeded alike must agree in
    every field of the result and of its final state (x, E, ∇E, step sizes, extras, owned,
    acceptance, stats); a run seeded `seed + 1` must end elsewhere; and none of the runs may
    touch the global torch RNG (every draw comes from the generator passed in).

    Arguments:
        case: a SamplerCase or a bare sampler.
        n_chains, n_steps: the size of the runs.
        seed: the seed of the two equal runs.

    Raises:
        AssertionError: naming what differed (or that nothing did).
    """
    case = as_case(case)
    x0 = _spread_start(n_chains, seed)
    before = torch.get_rng_state()

    def run(run_seed: int) -> SampleResult:
        generator = torch.Generator().manual_seed(run_seed)
        return case.sampler.sample(STANDARD_GAUSSIAN.energy, x0, n_steps, generator=generator)

    first, second, other = run(seed), run(seed), run(seed + 1)
    failures = []
    if differences := _result_differences(first, second):
        failures.append(f"two runs seeded {seed} differ: {'; '.join(differences)}")
    if _same(first.x, other.x):
        failures.append(f"runs seeded {seed} and {seed + 1} end at the same x")
    if not torch.equal(torch.get_rng_state(), before):
        failures.append("the runs drew from the global torch RNG instead of the generator")
    if failures:
        raise AssertionError(
            f"{case.label}, {n_chains} chains × {n_steps} steps: {'; '.join(failures)}"
        )


@attrs.define
class _FixedStart:
    """An initializer that always gives the same starting points."""

    x: Tensor

    def sample(self, n: int) -> InitBatch:
        return InitBatch(x=self.x[:n].clone())

    def update(self, round: Round) -> None:
        return None


def _reloaded(bank: Persistent, start: _FixedStart) -> Persistent:
    """A fresh bank loaded from `bank`'s checkpoint, written and read as `torch.save` bytes."""
    buffer = io.BytesIO()
    torch.save(bank.state_dict(), buffer)
    buffer.seek(0)
    fresh = Persistent(n_chains=bank.n_chains, start=start, shuffle=bank.shuffle)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def check_continuation(
    case: SamplerCase | Sampler, *, n_chains: int = 64, n_steps: int = 10, seed: int = 0
) -> None:
    """2N steps from x0 equal N steps, then N more continued through a `Persistent` bank.

    The bank is larger than the batch, as in training: `Persistent(2·n_chains,
    shuffle=False)` drawn `n_chains` at a time, so the compared chains (the bank's second
    half) first arrive with the "not set yet" entries the first half's update left for them
    (NaN step sizes, 0 ages), which the kernel's `init` must resolve as a fresh start would.
    Four draws, alternating halves: the other half runs `n_steps` with a generator of its
    own (seeded ``seed + 1``), then the compared half `n_steps` with the compared chains'
    generator (seeded `seed`), each followed by `update`; the bank's checkpoint is written
    and read (`state_dict` through `torch.save` / `torch.load`) between the two rounds. So
    the compared chains make exactly the random draws of one run of `2·n_steps` from their
    start, and their final x and state (E, ∇E, per-chain step sizes, extras, every `owned`
    tensor, e.g. MALA's adapted step sizes and ages) must equal that run's bit for bit, and
    so must `result.step_size`. With an adaptive kernel, pick its adaptation length between
    `n_steps` and `2·n_steps` so the carry-over is checked.

    The compared chains' first draw also carries an `owned` entry of the check's own
    (`CARRIED_OWNED`, per-chain marks), planted in the state the kernel continues: it goes
    through the kernel's `init` and steps, the bank and its checkpoint, and must come back
    unchanged after the second draw. So an `init` that ignores `previous` fails even when
    the kernel owns nothing (no step size, no `owned` of its own) and 2N = N + N would hold.

    Arguments:
        case: a SamplerCase or a bare sampler.
        n_chains: the batch size (the bank holds twice as many).
        n_steps: N, the steps of each half.
        seed: seeds the start and the generators.

    Raises:
        AssertionError: naming every field that differs.
    """
    case = as_case(case)
    sampler, energy = case.sampler, STANDARD_GAUSSIAN.energy
    x0 = _spread_start(2 * n_chains, seed)
    compared = x0[n_chains:]
    whole = sampler.sample(
        energy, compared, 2 * n_steps, generator=torch.Generator().manual_seed(seed)
    )

    start = _FixedStart(x0)
    bank = Persistent(n_chains=2 * n_chains, start=start, shuffle=False)
    generators = {
        "other": torch.Generator().manual_seed(seed + 1),
        "compared": torch.Generator().manual_seed(seed),
    }
    mark = torch.arange(n_chains, dtype=torch.int64) + 1
    second = None
    for index, half in enumerate(("other", "compared", "other", "compared"), start=1):
        if index == 3:
            bank = _reloaded(bank, start)
        batch = bank.sample(n_chains)
        if index == 2:  # the compared chains' first draw: plant the check's own entry
            owned = {**batch.state.owned, CARRIED_OWNED: mark}
            batch = attrs.evolve(batch, state=attrs.evolve(batch.state, owned=owned))
        result = sampler.sample(energy, batch, n_steps, generator=generators[half])
        bank.update(finished_round(index, batch, result))
        second = result if half == "compared" else second

    carried = second.state.owned.get(CARRIED_OWNED)
    differences = []
    if carried is None:
        differences.append(
            f"owned[{CARRIED_OWNED!r}], planted in the state the compared chains continued "
            f"from, is gone: `init(x, energy, previous=...)` must keep every `owned` entry of "
            f"`previous` (kept_from_previous) and `step` hand it on"
        )
    elif not _same(carried, mark):
        differences.append(f"owned[{CARRIED_OWNED!r}] changed: {_describe(carried, mark)}")
    without = {key: value for key, value in second.state.owned.items() if key != CARRIED_OWNED}
    differences += state_differences(whole.state, attrs.evolve(second.state, owned=without))
    for name in ("x", "step_size"):
        if not _same(getattr(whole, name), getattr(second, name)):
            differences.append(
                f"result.{name}: {_describe(getattr(whole, name), getattr(second, name))}"
            )
    if differences:
        raise AssertionError(
            f"{case.label}: {2 * n_steps} steps differ from {n_steps} + {n_steps} continued "
            f"through initializers.Persistent ({2 * n_chains} chains drawn {n_chains} at a "
            f"time, shuffle=False; the compared chains first ran from 'not set yet' entries): "
            f"{'; '.join(differences)}"
        )


class GradientCounter(nn.Module):
    """E(x) = ½|x|² + w·x (x flattened, w a parameter), counting its evaluations.

    Every evaluation adds one to `evaluations`; one whose output is differentiated (its
    gradient reaches the output) adds one to `gradients` too. So the gradient evaluations
    made are `gradients` and the energy-only ones `evaluations − gradients`.

    Arguments:
        dim: the number of coordinates per sample.
        dtype: the parameter's dtype.
    """

    def __init__(self, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1, 1, dim, dtype=dtype))
        self.evaluations = 0
        self.gradients = 0

    @property
    def energy_only(self) -> int:
        """Evaluations nobody differentiated: `evaluations − gradients`."""
        return self.evaluations - self.gradients

    def _count(self, grad: Tensor) -> None:
        self.gradients += 1

    def forward(self, x: Tensor) -> Tensor:
        self.evaluations += 1
        flat = x.flatten(1)
        value = 0.5 * flat.square().sum(1) + flat @ self.weight.to(x.dtype)
        if value.requires_grad:
            value.register_hook(self._count)
        return value


def _check_result(result: SampleResult, x0: Tensor, n_steps: int, energy: nn.Module) -> list[str]:
    """Shapes, finiteness and graph of a default (`differentiable=False`) run."""
    found = []
    batch = x0.shape[0]
    if result.x.shape != x0.shape or result.x.dtype != x0.dtype:
        found.append(
            f"result.x is {tuple(result.x.shape)} {result.x.dtype}, the start "
            f"{tuple(x0.shape)} {x0.dtype}"
        )
    if not torch.isfinite(result.x).all():
        found.append("result.x holds NaN or inf")
    if result.x.requires_grad or result.x.grad_fn is not None:
        found.append("result.x keeps an autograd graph although differentiable=False")
    if not _same(result.state.x.detach(), result.x):
        found.append("result.state.x is not result.x")
    if result.energy_trace.shape != (n_steps,) or not torch.isfinite(result.energy_trace).all():
        shape = tuple(result.energy_trace.shape)
        found.append(f"energy_trace is {shape} with non-finite entries or not ({n_steps},)")
    rate = result.acceptance_rate
    if rate is not None and (rate.shape != (batch,) or not ((rate >= 0) & (rate <= 1)).all()):
        found.append(f"acceptance_rate {tuple(rate.shape)} not per chain in [0, 1]")
    if result.step_size.shape not in ((), (batch,)):
        found.append(f"step_size shape {tuple(result.step_size.shape)}, want () or ({batch},)")
    for name, value in result.stats.items():
        if value.shape not in ((), (batch,)) or not torch.isfinite(value).all():
            found.append(f"stats[{name!r}] {tuple(value.shape)} not finite () or ({batch},)")
    if any(p.grad is not None for p in energy.parameters()):
        found.append("the energy's parameters got a .grad")
    if x0.grad is not None:
        found.append("the start x0 got a .grad")
    return found


def check_contract(case: SamplerCase | Sampler, *, n_chains: int = 5, seed: int = 0) -> None:
    """Shapes, no NaN, honest costs, no graph by default, foreign `owned` kept, ∇E on demand.

    On E(x) = ½|x|² + w·x (`GradientCounter`) with flat (B, 2) and image-shaped (B, 3, 4, 4)
    float32 chains:

    - `sample` for 0, 1 and 3 steps: x keeps the start's shape and dtype, is finite, carries
      no graph (`differentiable=False`: no `requires_grad`, no `grad_fn`, no `.grad` on the
      parameters or the start); the trace has one finite entry per step; acceptance (if
      any) and stats are per-chain or scalar and finite; 0 steps returns the start.
    - The costs are what the energy really did, `init` included, for every number of steps:
      `result.n_grad_evals` equals the evaluations that were differentiated and
      `result.n_energy_evals` the energy-only ones (`n_flow_evals` is the kernel's own
      count of flow passes: non-negative, not checked against a flow here).
    - `differentiable=True` keeps the graph: a loss on the final x reaches the start.
    - A lone `step` (no context) from `init` hands on an `owned` entry it does not own
      (`FOREIGN_OWNED`) unchanged, as a kernel inside `Composite` or a persistent bank must,
      and its `StepInfo` counts what the energy did in it.
    - A lone `step` from a state with E set but ∇E None (what a kernel moving in another
      space, e.g. an independence MH move, may leave) gives finite chains of the right
      shape, evaluating ∇E itself if it needs it, and counts that honestly.

    Arguments:
        case: a SamplerCase or a bare sampler.
        n_chains: the batch size.
        seed: seeds the starts and generators.

    Raises:
        AssertionError: listing every broken clause.
    """
    sampler = as_case(case).sampler
    failures = []
    for shape in ((2,), (3, 4, 4)):
        dim = int(torch.tensor(shape).prod())
        for n_steps in (0, 1, 3):
            energy = GradientCounter(dim)
            generator = torch.Generator().manual_seed(seed)
            x0 = torch.randn(n_chains, *shape, generator=generator).requires_grad_(True)
            result = sampler.sample(energy, x0, n_steps, generator=generator)
            where = f"{shape}, {n_steps} steps: "
            failures += [where + problem for problem in _check_result(result, x0, n_steps, energy)]
            if n_steps == 0 and not torch.equal(result.x, x0.detach()):
                failures.append(where + "0 steps did not return the start")
            failures += [where + problem for problem in _check_counts(result, energy)]
        failures += _check_graph_and_lone_step(sampler, shape, n_chains, seed)
    if failures:
        label = as_case(case).label
        raise AssertionError(f"{label} breaks the sampler contract: " + "; ".join(failures))


def _check_graph_and_lone_step(
    sampler: Sampler, shape: tuple[int, ...], n_chains: int, seed: int
) -> list[str]:
    found = []
    dim = int(torch.tensor(shape).prod())
    energy: Energy = GradientCounter(dim)
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n_chains, *shape, generator=generator).requires_grad_(True)
    result = sampler.sample(energy, x0, 2, generator=generator, differentiable=True)
    if not result.x.requires_grad:
        found.append(f"{shape}: differentiable=True left no graph on result.x")
    else:
        (grad,) = torch.autograd.grad(result.x.square().sum(), x0, allow_unused=True)
        if grad is None or not torch.isfinite(grad).all():
            found.append(f"{shape}: differentiable=True: the loss does not reach the start")
    state = sampler.init(x0.detach(), energy)
    mark = torch.arange(n_chains, dtype=torch.int64)
    state = attrs.evolve(state, owned={**state.owned, FOREIGN_OWNED: mark})
    without_grad = attrs.evolve(state, grad=None)
    for start, what in ((state, "a lone step"), (without_grad, "a lone step from ∇E = None")):
        counter = GradientCounter(dim)
        try:
            new_state, info = sampler.step(start, counter, generator=generator)
        except Exception as error:  # a kernel that assumes ∇E is always there: say so
            found.append(f"{shape}: {what} raised {error!r}")
            continue
        if FOREIGN_OWNED not in new_state.owned:
            found.append(f"{shape}: {what} dropped owned[{FOREIGN_OWNED!r}] (not its own)")
        elif not torch.equal(new_state.owned[FOREIGN_OWNED], mark):
            found.append(f"{shape}: {what} changed owned[{FOREIGN_OWNED!r}]")
        if new_state.x.shape != x0.shape or not torch.isfinite(new_state.x).all():
            found.append(f"{shape}: {what} gave x {tuple(new_state.x.shape)} or non-finite x")
        found += [f"{shape}: {what}: {problem}" for problem in _check_counts(info, counter)]
    return found


def _check_counts(record: SampleResult | StepInfo, energy: GradientCounter) -> list[str]:
    """`record`'s costs against what `energy` counted (gradients, energy-only evaluations)."""
    found = []
    if record.n_grad_evals != energy.gradients:
        found.append(
            f"n_grad_evals = {record.n_grad_evals} but the energy was differentiated "
            f"{energy.gradients} times"
        )
    if record.n_energy_evals != energy.energy_only:
        found.append(
            f"n_energy_evals = {record.n_energy_evals} but the energy was evaluated "
            f"{energy.energy_only} times without a gradient"
        )
    if not (isinstance(record.n_flow_evals, int) and record.n_flow_evals >= 0):
        found.append(f"n_flow_evals = {record.n_flow_evals!r}, not a count >= 0")
    return found
