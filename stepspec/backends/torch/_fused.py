"""The compiled fast path of the torch backend (spec/backends.md#compiled): a step of the drop-in
optimizers — F on the live state, then θ += G — as one elementwise pass per tensor, compiled by
``torch.compile``.

An algorithm with a fast path has a ``Kernel``:

- ``scalars(optimizer, state)``: the host part of F — counters advanced, the step's scalars (bias
  corrections, the learning rate) computed in float64, as the eager step computes them;
- ``update(θ, g, *fields, s)``: one tensor's step, in place on θ and on the per-parameter state
  ``fields``, with ``s`` the scalars as 0-d float64 CPU tensors — values, not constants, so a new
  learning rate or bias correction reuses the compiled code instead of recompiling it;
- ``decayed``: the same update with the weight-decay term, used when λ ≠ 0 (the spec adds it "only
  when λ ≠ 0", and the two differ when θ holds a non-finite entry);
- ``reduces``: ``scalars`` runs the step's reduction round with ``partial_sums`` — each tensor's partial
  sums as one compiled loop, chunked as the pass is — compiled when the pass is.

``step_`` runs a kernel over a parameter structure: the tensors are grouped by rank and cut into chunks
of at most ``CHUNK``; each chunk is one call of the compiled pass (one generated loop per tensor, each
tensor read and written once). Sizes are symbolic (``dynamic=True``, without duck sizing), so one compiled
pass serves every chunk of the same rank and length, whatever the sizes. A tensor the pass cannot take —
fewer than 2 elements (compiled code specialises sizes 0 and 1) or not contiguous — runs the same
``update`` eagerly. The compiled passes are cached per kernel for the process (by dtype, device, rank and
chunk length under it), and torch's on-disk cache of generated code makes the next process's
compilation a load.
"""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.fx.experimental._config as shape_config

from ...errors import HyperparameterError
from ._core import Optimizer, State

CHUNK = 8
"""Tensors per compiled call: a call costs about 25 µs of guard and dispatch overhead (2 CPU cores), and
compilation time grows with the tensors of a chunk (spec/backends.md#compiled)."""

AUTO_MIN_PARAMETERS = 1_000_000
"""``compile="auto"`` compiles from this many parameters: below it the eager multi-tensor step costs
little, and compiling (seconds per pass on 2 cores) pays off only over many steps."""

RECOMPILE_LIMIT = 64
"""Compiled variants allowed per pass (dtype × device × rank × chunk length); torch's default, 8, can be
reached by one model on two devices, after which torch would silently run the pass uncompiled."""


@dataclass(frozen=True)
class Kernel:
    """An algorithm's step as its reductions and host scalars, then one elementwise pass per tensor.

    ``scalars(optimizer, state, step, params)`` is everything before the pass: the host part of F and,
    for an algorithm with global quantities, the step's one reduction round (``_core.reduce_sum``) and
    the scalar math on its result. It returns the pass's scalars: Python floats (sent as 0-d float64 CPU
    tensors) or 0-d tensors it computed on the device (passed as they are, so no host read is needed).
    ``fields`` name the per-parameter state the pass updates in place, each a list over the structure;
    ``state_columns``, where given, replaces them (a multi-column field such as RLLC's memory, one list
    per column). ``reduces``: ``scalars`` takes a keyword ``compile``, whether its reduction round
    (``partial_sums``) runs compiled — as the step's pass does.

    ``applies(optimizer)``, where given, says whether the kernel implements that optimizer's configuration;
    where it does not (TO with a projection, MetaOptimize with a Hessian), the step runs eagerly.
    ``observed`` names fields of the observation (``StepInput``) the pass reads after the state fields, each
    a list over the structure (TO's x_t, ``params``); one the observation lacks (None) is not passed.
    ``select(optimizer)``, where given, chooses the pass for the optimizer's configuration (MetaOptimize's
    base and κ), in place of ``update`` and ``decayed``."""

    fields: tuple[str, ...]
    scalars: Callable[..., tuple]
    update: Callable[..., None]
    decayed: Callable[..., None] | None = None
    state_columns: Callable[[State], list] | None = None
    reduces: bool = False
    applies: Callable[[Optimizer], bool] | None = None
    observed: tuple[str, ...] = ()
    select: Callable[[Optimizer], Callable[..., None]] | None = None

    def applies_to(self, optimizer: Optimizer) -> bool:
        return self.applies is None or self.applies(optimizer)

    def pass_for(self, optimizer: Optimizer) -> Callable[..., None]:
        if self.select is not None:
            return self.select(optimizer)
        return self.decayed if self.decayed is not None and optimizer.weight_decay else self.update

    def host_scalars(self, optimizer: Optimizer, state: State, step, params, compile: bool) -> tuple:
        """``scalars``' values as the pass takes them: 0-d tensors, floats sent as float64 CPU tensors."""
        values = self.scalars(optimizer, state, step, params, **({"compile": compile} if self.reduces else {}))
        return tuple(v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.float64) for v in values)

    def columns(self, state: State) -> list:
        if self.state_columns is not None:
            return self.state_columns(state)
        return [state.stored[name] for name in self.fields]

    def pass_columns(self, state: State, step, params: list[torch.Tensor]) -> list:
        """The pass's columns: θ, g, the state fields, then the observed fields the observation carries."""
        observed = (getattr(step, name) for name in self.observed)
        return [params, step.grad, *self.columns(state), *(column for column in observed if column is not None)]


KERNELS: dict[str, Kernel] = {}
"""Algorithm id → its fast path. Each family module defines its kernels next to its eager step (the
classical ones in ``classical.KERNELS``); the package ``__init__`` registers them here."""


# --------------------------------------------------------------------------- compiling and running


def _chunk_pass(update: Callable, tensors: Sequence[Sequence[torch.Tensor]], scalars: tuple):
    """``update`` on each tensor of a chunk. Shaped as they are: torch merges a contiguous tensor's
    dimensions into one vectorised loop, while flattening inside the graph (``view(-1)``) makes it index
    a matrix's gradient by a product of distinct size symbols, modulo, element by element (measured: 2×
    slower)."""
    for items in zip(*tensors):
        update(*items, scalars)


COMPILE_FAILURES = (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit)
"""What torch.compile raises when it cannot compile a call (the latter, under ``fullgraph=True`` once the
variants of a pass reach ``RECOMPILE_LIMIT``, is not a ``TorchDynamoException``)."""


def _own_code(driver: Callable, kernel: Callable) -> Callable:
    """``driver`` with a code object of its own for ``kernel``: dynamo counts compiled variants against
    ``recompile_limit`` per code object, so one driver shared by every kernel would let a process that
    steps several algorithms (the benchmark, a user with two optimizers) exhaust the limit of all."""
    code = driver.__code__.replace(co_name=f"{driver.__name__}_{kernel.__name__}")
    return types.FunctionType(code, driver.__globals__, code.co_name, driver.__defaults__, driver.__closure__)


@functools.cache
def compiled(update: Callable) -> Callable:
    """The compiled chunk pass of ``update``, one per process; torch keeps its variants under it."""
    return torch.compile(functools.partial(_own_code(_chunk_pass, update), update), dynamic=True, fullgraph=True)


_uncompilable: set[Callable] = set()


def use_compiled(mode, optimizer: Optimizer, structure) -> bool:
    """Whether a step runs compiled: never where the algorithm has no kernel for the optimizer's
    configuration (``Kernel.applies``); else ``mode`` True or False as given; ``"auto"``: when the
    algorithm's in-place step is not torch's own fused kernel (``torch_fused``: faster than the compiled
    pass at every size measured), the kernel compiled before (or was not tried), the structure has at
    least ``AUTO_MIN_PARAMETERS`` parameters, and the step is not itself being
    traced by an enclosing ``torch.compile``."""
    if mode not in (True, False, "auto"):
        raise HyperparameterError("compile", f"must be True, False or 'auto', got {mode!r}")
    kernel = KERNELS.get(optimizer.algo)
    if kernel is not None and not kernel.applies_to(optimizer):
        kernel = None
    if mode != "auto" or kernel is None:
        return bool(mode) and kernel is not None
    return (
        not getattr(optimizer, "torch_fused", False)
        and kernel.pass_for(optimizer) not in _uncompilable
        and structure.n >= AUTO_MIN_PARAMETERS
        and not torch.compiler.is_compiling()
    )


def _compilable(items: Sequence[torch.Tensor]) -> bool:
    return items[0].numel() >= 2 and all(t.is_contiguous() for t in items)


def chunks(columns: Sequence[Sequence[torch.Tensor]]) -> tuple[list[list[int]], list[int]]:
    """The indices of the tensors the compiled pass takes, grouped by rank in chunks of at most ``CHUNK``,
    and the indices of the others (run eagerly)."""
    by_rank: dict[int, list[int]] = {}
    eager = []
    for i, items in enumerate(zip(*columns)):
        if _compilable(items):
            by_rank.setdefault(items[0].dim(), []).append(i)
        else:
            eager.append(i)
    grouped = [group[j : j + CHUNK] for _, group in sorted(by_rank.items()) for j in range(0, len(group), CHUNK)]
    return grouped, eager


def run_(update: Callable, columns: Sequence[Sequence[torch.Tensor]], scalars: tuple, compile: bool) -> None:
    """``update`` over every tensor of ``columns`` (θ, g, then the state fields, each a list over the
    structure), compiled or eagerly. A pass that fails to compile is reported once and the step finishes
    eagerly, so no tensor is left half-stepped; later steps of that kernel run eagerly."""
    grouped, eager = chunks(columns) if compile and update not in _uncompilable else ([], range(len(columns[0])))
    eager = list(eager)
    with shape_config.patch(use_duck_shape=False), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        for k, indices in enumerate(grouped):
            try:
                compiled(update)([[column[i] for i in indices] for column in columns], scalars)
            except COMPILE_FAILURES as exc:
                _uncompilable.add(update)
                warnings.warn(f"torch.compile failed for {update.__name__}; running it eagerly: {exc}", stacklevel=3)
                eager += [i for rest in grouped[k:] for i in rest]
                break
    for i in eager:
        update(*(column[i] for column in columns), scalars)


def _chunk_sums(partials: Callable, tensors: Sequence[Sequence[torch.Tensor]], scalars: tuple) -> list[torch.Tensor]:
    return [partials(*items, *scalars) for items in zip(*tensors)]


@functools.cache
def compiled_sums(partials: Callable) -> Callable:
    """The compiled chunk reduction of ``partials``: under torch.compile the sums of one tensor are one
    loop that reads each input once."""
    return torch.compile(functools.partial(_own_code(_chunk_sums, partials), partials), dynamic=True, fullgraph=True)


def partial_sums(
    partials: Callable, columns: Sequence[Sequence[torch.Tensor]], compile: bool, scalars: tuple = ()
) -> list[torch.Tensor]:
    """A reduction round's local part: ``partials(*items, *scalars)``, one tensor's row of partial sums, for
    every tensor of ``columns``, in structure order, for ``_core.reduce_sum`` to combine. Chunked and
    compiled as ``run_`` runs a pass (``scalars`` 0-d tensors), with the same eager fallback."""
    rows: list = [None] * len(columns[0])
    grouped, eager = chunks(columns) if compile and partials not in _uncompilable else ([], range(len(rows)))
    eager = list(eager)
    with shape_config.patch(use_duck_shape=False), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        for k, indices in enumerate(grouped):
            try:
                sums = compiled_sums(partials)([[column[i] for i in indices] for column in columns], scalars)
            except COMPILE_FAILURES as exc:
                _uncompilable.add(partials)
                warnings.warn(f"torch.compile failed for {partials.__name__}; running it eagerly: {exc}", stacklevel=3)
                eager += [i for rest in grouped[k:] for i in rest]
                break
            for i, row in zip(indices, sums):
                rows[i] = row
    for i in eager:
        rows[i] = partials(*(column[i] for column in columns), *scalars)
    return rows


def _kernel_step_(kernel: Kernel, optimizer: Optimizer, state: State, step, params, compile: bool) -> None:
    """The kernel's host scalars (and reduction round), then its pass over every tensor."""
    with torch.no_grad():
        scalars = kernel.host_scalars(optimizer, state, step, params, compile)
        run_(kernel.pass_for(optimizer), kernel.pass_columns(state, step, params), scalars, compile=compile)


def step_(optimizer: Optimizer, state: State, obs, params: list[torch.Tensor], compile=True) -> None:
    """The drop-in optimizers' step, ``optimizer.step_(state, obs, params)``, on the fast path: the
    observation checked first (a rejected step changes nothing), then the kernel — compiled as
    ``use_compiled(compile, …)`` decides, else run eagerly, which tests its arithmetic without compiling."""
    kernel = KERNELS[optimizer.algo]
    if not kernel.applies_to(optimizer):
        optimizer.step_(state, obs, params)
        return
    step = optimizer.check_observation(obs, state.structure)
    _kernel_step_(kernel, optimizer, state, step, params, use_compiled(compile, optimizer, state.structure))


def advance_(optimizer: Optimizer, state: State, step, params: list[torch.Tensor], mode="auto") -> None:
    """The drop-in optimizers' step on an observation already checked (``check_observation``): the kernel's
    compiled pass where ``use_compiled(mode, …)`` says so, else the eager step (torch's fused kernel or
    multi-tensor operations), which beats the kernel run uncompiled."""
    if use_compiled(mode, optimizer, state.structure):
        _kernel_step_(KERNELS[optimizer.algo], optimizer, state, step, params, compile=True)
    else:
        optimizer.advance_(state, step, params)
