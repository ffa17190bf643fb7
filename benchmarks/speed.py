"""Time, memory and memory traffic of one optimizer step, per implementation (issue 11; spec/backends.md#bytes).

    python benchmarks/speed.py [--quick] [--algorithms adam,momentum] [--sizes 1e3,1e6] [--tensors 1,100]
        [--implementations "torch.optim fused,stepspec compiled"] [--device cpu|cuda] [--dtype float32]
        [--threads T] [--clock wall|thread] [--profile] [--out benchmarks/results]

For each algorithm, size n and layout (n parameters as 1 tensor, or as 100 tensors of ranks 1 and 2), every
implementation that has the algorithm steps its own copy of the same parameters and gradients. Measured:

- time per step: the median over warm repeats; the implementations take turns round by round, so that a
  change in the machine's load reaches all of them alike; the device is synchronised around each step;
- memory, read from the allocator: the bytes an implementation keeps between steps (its state) and the
  peak of extra bytes during a warm step. CUDA: ``torch.cuda.memory_allocated`` and
  ``max_memory_allocated``. CPU: the allocation and free records of torch's profiler, summed in order —
  tracemalloc does not see tensor memory, and the process's resident size misses allocations that reuse
  freed pages;
- memory traffic: the bytes the spec's step must read and write (the table of spec/backends.md#bytes),
  and the bandwidth that implies.

Implementations are the entries of IMPLEMENTATIONS: torch.optim's for-loop, foreach and fused variants
(and lion-pytorch for Lion) are the reference points; stepspec's are judged against them by TARGETS (issue
11's targets). The jax backend's step and optax's under ``jax.jit`` run on CPU in float32, their ratios to
torch for information, their compilations counted (no memory figures: the allocator records see torch's
tensors only). The array-API backend's step runs on NumPy on the CPU (no speed target there, recorded for
information) and on CuPy on CUDA, its elementwise passes fused (issue 13's targets, CUPY_TARGETS and
BANDWIDTH_TARGET). Every row reports the fraction of the device's measured copy bandwidth its step
reaches, counting the bytes spec/backends.md#bytes says the step must move. Prints progress, a table of
ratios and the targets; writes speed-<device>.json and the log-log plot speed-<device>.png to --out.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _plotting import pyplot

from stepspec import Observation, spec
from stepspec.backends.torch import ALGORITHMS as TORCH_ALGORITHMS
from stepspec.backends.torch import _fused
from stepspec.reference.propagators import propagator

# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    """An algorithm as benchmarked: spec hyperparameters, and torch.optim's equivalent where torch has it."""

    algo: str
    hyperparameters: dict
    torch_optim: tuple[str, dict] | None = None
    unit_norm: bool = False  # parameters and gradients scaled to norm about 1 (below)


WORKLOADS = {
    w.algo: w
    for w in (
        Workload("sgd", {"lr": 1e-3}, ("SGD", {"lr": 1e-3})),
        Workload("momentum", {"lr": 1e-3, "beta": 0.9}, ("SGD", {"lr": 1e-3, "momentum": 0.9})),
        Workload("nag", {"lr": 1e-3, "beta": 0.9}, ("SGD", {"lr": 1e-3, "momentum": 0.9, "nesterov": True})),
        Workload("adam", {"lr": 1e-3}, ("Adam", {"lr": 1e-3})),
        Workload("adamw", {"lr": 1e-3}, ("AdamW", {"lr": 1e-3})),  # both with the default weight decay 1e-2
        Workload("rmsprop", {"lr": 1e-2}, ("RMSprop", {"lr": 1e-2})),
        Workload("lion", {"lr": 1e-4}),
        Workload("lm_rllc", dict(zip(("B", "a"), propagator("M(0.9) ⊕ M(0)")))),
        Workload("elra", {}),
        Workload("diagonal_to", {"lr": 1e-3, "lr_a": 1e-4}),
        # RankOne TO's (u, v) step is stable for η^{uv}‖x‖² ≲ 1: with entries of size 1 it overflows within a few
        # steps at n = 1e6 (then the finite check rejects the parameters)
        Workload("rank_one_to", {"lr": 1e-3, "lr_uv": 1e-4}, unit_norm=True),
        Workload(
            "metaoptimize", {"base": "adamw", "meta": "lion", "alpha0": 1e-3, "blocks": "scalar", "hessian": "free"}
        ),
    )
}


@dataclass(frozen=True)
class Target:
    """Issue 11: ``algo``'s step takes at most ``bound`` times the step of ``against`` — the fastest
    torch.optim variant (None) or a named implementation — running ``peer_algo`` (default: ``algo``)."""

    algo: str
    bound: float
    peer_algo: str | None = None
    against: str | None = None

    @property
    def peer(self) -> str:
        return self.peer_algo or self.algo

    def describe(self) -> str:
        return f"{self.algo} ≤ {self.bound:g}× {self.against or 'fastest torch.optim'} {self.peer}"


TARGETS = (
    *(Target(algo, 1.1) for algo in ("sgd", "momentum", "nag", "adam", "adamw", "rmsprop")),
    Target("lm_rllc", 1.6, "momentum", "torch.optim fused"),
    Target("elra", 1.3, "momentum", "torch.optim fused"),
    Target("diagonal_to", 1.3, "adam", "torch.optim fused"),
    Target("rank_one_to", 1.3, "adam", "torch.optim fused"),
    Target("metaoptimize", 2.0, "adamw", "torch.optim fused"),
)
JAX_TARGETS = tuple(Target(t.algo, t.bound, t.peer_algo, "optax (jit)") for t in TARGETS)
"""Issue 12: the same bounds for the jax backend, against optax's equivalent under ``jax.jit``."""
CUPY_TARGETS = (Target("lm_rllc", 1.6, "momentum", "torch.optim fused"),)
"""Issue 13: on the same GPU, LM-RLLC (k = 2) at most 1.6× torch's fused SGD-momentum, cost linear in n."""
BANDWIDTH_TARGET, BANDWIDTH_FROM = 0.7, 10**7
BANDWIDTH_ALGORITHMS = ("sgd", "momentum", "nag", "adam", "adamw", "rmsprop", "lion", "lm_rllc")
BANDWIDTH_IMPLEMENTATIONS = ("stepspec cupy", "stepspec compiled")
"""Issue 13: on CUDA, from n = 1e7, the classical and LM-RLLC steps of the cupy backend and of the torch
backend's compiled path reach at least 70% of the measured copy bandwidth."""
SPEED_FROM = 10**6  # the speed targets hold from this n
OVERHEAD_N, OVERHEAD_TENSORS, OVERHEAD_BOUND = 10**3, 100, 2.0  # ≤ 2× torch.optim foreach at 1e3 in 100 tensors
LINEAR_FROM, LINEAR_SLACK = 10**4, 0.1  # log-log slope from 1e4 at most the reference's + 0.1
OUTLIVING_SLACK = 1024  # bytes a warm step may leave allocated (0-d counters), far below any n-sized tensor

# --------------------------------------------------------------------------- the bytes model


@dataclass(frozen=True)
class Traffic:
    """Per parameter, in units of the parameter dtype's itemsize (spec/backends.md#bytes)."""

    reads: int
    writes: int
    state: int


def _count(cell: str) -> int:
    cell = cell.strip()
    return 0 if cell in ("", "—", "-") else len(cell.split(","))


def traffic_model() -> dict[str, Traffic]:
    """The table 'algorithm | reads | writes | state' of spec/backends.md, per algorithm id."""
    for table in spec.tables(spec.page("backends")):
        header = [c.lower() for c in table[0]]
        if header[:4] == ["algorithm", "reads", "writes", "state"]:
            return {row[0].split("`")[1]: Traffic(*(_count(c) for c in row[1:4])) for row in table[1:]}
    raise RuntimeError("spec/backends.md has no table 'algorithm | reads | writes | state'")


# --------------------------------------------------------------------------- implementations


@dataclass
class Stepper:
    """A built implementation: ``step`` runs one step; ``parts`` are pieces of it timed alone (a profile)."""

    step: Callable[[], None]
    parts: dict[str, Callable[[], object]] = field(default_factory=dict)
    compilations: Callable[[], int] | None = None  # programs jax has compiled for this stepper so far


@dataclass(frozen=True)
class Implementation:
    """An entry of the benchmark. ``build(workload, params, grads)`` gets the implementation's own copies
    of the parameters and gradients (torch tensors on the device; another framework converts them, e.g.
    by DLPack, and synchronises inside its step) and returns a Stepper, or None where it does not
    implement the workload."""

    name: str
    peer: bool
    build: Callable[[Workload, list, list], Stepper | None]
    framework: str = "torch"  # issue 11's targets and the allocator's memory figures are torch's


def torch_optim(variant: dict) -> Callable:
    def build(workload, params, grads):
        if workload.torch_optim is None:
            return None
        name, kwargs = workload.torch_optim
        leaves = [torch.nn.Parameter(p) for p in params]
        for leaf, g in zip(leaves, grads):
            leaf.grad = g
        try:
            optimizer = getattr(torch.optim, name)(leaves, **kwargs, **variant)
        except (TypeError, RuntimeError, ValueError):  # no such variant for this class, dtype or device
            return None
        return Stepper(optimizer.step)

    return build


def lion_pytorch(workload, params, grads):
    if workload.algo != "lion":
        return None
    try:
        from lion_pytorch import Lion
    except ImportError:
        return None
    leaves = [torch.nn.Parameter(p) for p in params]
    for leaf, g in zip(leaves, grads):
        leaf.grad = g
    return Stepper(Lion(leaves, **workload.hyperparameters).step)


def stepspec_functional(compiled: bool) -> Callable:
    """The functional optimizer's in-place step, what the drop-in optimizers call: eager
    (``optimizer.step_``), or the compiled fast path (``_fused.step_``)."""

    def build(workload, params, grads):
        constructor = TORCH_ALGORITHMS.get(workload.algo)
        if constructor is None or (compiled and workload.algo not in _fused.KERNELS):
            return None
        optimizer = constructor(**workload.hyperparameters, dtype=params[0].dtype, device=params[0].device)
        if optimizer.needs - {"grad", "params", "loss"}:
            return None  # curvature products need a model, not a gradient stream
        state = optimizer.init(params)
        steps = itertools.count(1)

        def observation():
            return Observation(
                grad=grads,
                params=params if "params" in optimizer.needs else None,
                loss=1.0 / next(steps) if "loss" in optimizer.needs else None,  # a falling loss: no retraces
            )

        def step():
            if compiled:
                _fused.step_(optimizer, state, observation(), params, compile=True)
            else:
                optimizer.step_(state, observation(), params)

        return Stepper(step, {"check": lambda: optimizer.check_observation(observation(), state.structure)})

    return build


def functional_step(optimizer, params, grads, synchronize: Callable) -> Callable[[], None]:
    """A step of a backend's ``optimizer.step(state, obs, params) -> (state, params)`` on a fixed gradient,
    the loss falling (so ELRA never retraces), then ``synchronize(params)`` waits for the device."""
    state = optimizer.init(params)
    steps = itertools.count(1)

    def step():
        nonlocal state, params
        observation = Observation(
            grad=grads,
            params=params if "params" in optimizer.needs else None,
            loss=1.0 / next(steps) if "loss" in optimizer.needs else None,
        )
        state, params = optimizer.step(state, observation, params)
        synchronize(params)

    return step


def jax_arrays(tensors: list) -> list | None:
    """CPU float32 torch tensors as jax arrays (copied through NumPy) on jax's default device, or None
    elsewhere: the jax rows are float32 on CPU. Left uncommitted, as jnp.asarray makes them, so that the
    first step's outputs (uncommitted too) do not select a second program on the next step."""
    import jax

    if tensors[0].dtype != torch.float32 or tensors[0].device.type != "cpu" or jax.default_backend() != "cpu":
        return None
    return [jax.numpy.asarray(t.numpy()) for t in tensors]


def cache_sizes(*jitted) -> Callable[[], int]:
    """Programs the ``jax.jit`` functions have compiled since this call."""
    before = sum(f._cache_size() for f in jitted)
    return lambda: sum(f._cache_size() for f in jitted) - before


def stepspec_jax(workload, params, grads):
    """The jax backend's host step, ``optimizer.step``: the observation checked on the host (a compiled
    finite check, one host read), then F, G and θ + G as one compiled call."""
    from stepspec.backends.jax import ALGORITHMS as JAX_ALGORITHMS

    constructor = JAX_ALGORITHMS.get(workload.algo)
    params, grads = jax_arrays(params), jax_arrays(grads)
    if constructor is None or params is None:
        return None
    import jax

    optimizer = constructor(**workload.hyperparameters, dtype="float32")
    if optimizer.needs - {"grad", "params", "loss"}:
        return None  # curvature products need a model, not a gradient stream
    compilations = cache_sizes(type(optimizer)._compiled_step)
    return Stepper(functional_step(optimizer, params, grads, jax.block_until_ready), compilations=compilations)


def jitted_transformation(transformation, params, grads, with_loss: bool = False) -> Stepper:
    """An optax transformation's ``update`` and ``apply_updates`` in one ``jax.jit``-compiled step; the
    loss passed as ``value`` (a falling one) where the transformation needs it."""
    import jax
    import optax

    @jax.jit
    def update(params, optimizer_state, grads, value):
        extra = {"value": value} if with_loss else {}
        updates, optimizer_state = transformation.update(grads, optimizer_state, params, **extra)
        return optax.apply_updates(params, updates), optimizer_state

    optimizer_state = transformation.init(params)
    steps = itertools.count(1)

    def step():
        nonlocal params, optimizer_state
        params, optimizer_state = update(params, optimizer_state, grads, 1.0 / next(steps))
        jax.block_until_ready(params)

    return Stepper(step, compilations=cache_sizes(update))


def stepspec_optax(workload, params, grads):
    """The jax backend's algorithm as a ``stepspec.optax`` transformation, under ``jax.jit`` as optax's own."""
    from stepspec.backends.jax import ALGORITHMS as JAX_ALGORITHMS

    params, grads = jax_arrays(params), jax_arrays(grads)
    if workload.algo not in JAX_ALGORITHMS or params is None:
        return None
    import stepspec.optax

    transformation = getattr(stepspec.optax, workload.algo)(**workload.hyperparameters)
    needs = JAX_ALGORITHMS[workload.algo](**workload.hyperparameters, dtype="float32").needs
    if needs - {"grad", "params", "loss"}:
        return None
    return jitted_transformation(transformation, params, grads, with_loss="loss" in needs)


def optax_transformation(workload):
    """optax's equivalent of the workload: torch.optim's hyperparameters (lion-pytorch's for Lion), where
    optax's defaults differ (AdamW's decay, RMSprop's averaging 0.99 and ε outside the root, Lion's decay)
    set to them."""
    import optax

    lr = workload.hyperparameters.get("lr")
    return {
        "sgd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr, momentum=0.9),
        "nag": lambda: optax.sgd(lr, momentum=0.9, nesterov=True),
        "adam": lambda: optax.adam(lr),
        "adamw": lambda: optax.adamw(lr, weight_decay=1e-2),
        "rmsprop": lambda: optax.rmsprop(lr, decay=0.99, eps=1e-8, eps_in_sqrt=False),
        "lion": lambda: optax.lion(lr, b1=0.9, b2=0.99, weight_decay=0.0),
    }.get(workload.algo, lambda: None)()


def optax_jit(workload, params, grads):
    """optax's ``update`` and ``apply_updates`` in one ``jax.jit``-compiled step."""
    params, grads = jax_arrays(params), jax_arrays(grads)
    transformation = None if params is None else optax_transformation(workload)
    return None if transformation is None else jitted_transformation(transformation, params, grads)


def stepspec_array_api(workload, params, grads):
    """The array-API backend's ``optimizer.step`` (F, then θ + G in one fused pass per parameter): on NumPy
    (``array_api_compat.numpy``) for CPU tensors, on CuPy for CUDA tensors (shared through DLPack), the
    device synchronised inside the step."""
    from stepspec.backends.array_api import ALGORITHMS as ARRAY_API_ALGORITHMS
    from stepspec.backends.array_api._core import Namespace

    constructor = ARRAY_API_ALGORITHMS.get(workload.algo)
    if constructor is None:
        return None
    dtype = str(params[0].dtype).removeprefix("torch.")
    if params[0].device.type == "cuda":
        import array_api_compat.cupy
        import cupy

        ns = Namespace(array_api_compat.cupy, dtype, kernels=cupy)
        params, grads = [cupy.from_dlpack(t) for t in params], [cupy.from_dlpack(t) for t in grads]

        def synchronize(_):
            cupy.cuda.runtime.deviceSynchronize()

    else:
        import array_api_compat.numpy

        ns = Namespace(array_api_compat.numpy, dtype)
        params, grads = [t.numpy() for t in params], [t.numpy() for t in grads]

        def synchronize(_):
            return None  # NumPy computes synchronously

    optimizer = constructor(**workload.hyperparameters, ns=ns)
    if optimizer.needs - {"grad", "params", "loss"}:
        return None  # curvature products need a model, not a gradient stream
    return Stepper(functional_step(optimizer, params, grads, synchronize))


def stepspec_cupy(workload, params, grads):
    return stepspec_array_api(workload, params, grads) if params[0].device.type == "cuda" else None


def stepspec_numpy_array_api(workload, params, grads):
    return stepspec_array_api(workload, params, grads) if params[0].device.type == "cpu" else None


IMPLEMENTATIONS = {
    i.name: i
    for i in (
        Implementation("torch.optim for-loop", True, torch_optim({"foreach": False})),
        Implementation("torch.optim foreach", True, torch_optim({"foreach": True})),
        Implementation("torch.optim fused", True, torch_optim({"fused": True})),
        Implementation("lion-pytorch", True, lion_pytorch),
        Implementation("stepspec eager", False, stepspec_functional(compiled=False)),
        Implementation("stepspec compiled", False, stepspec_functional(compiled=True)),
        Implementation("stepspec jax", False, stepspec_jax, framework="jax"),
        Implementation("stepspec optax (jit)", False, stepspec_optax, framework="jax"),
        Implementation("optax (jit)", True, optax_jit, framework="jax"),
        Implementation("stepspec numpy-array-api", False, stepspec_numpy_array_api, framework="array-api"),
        Implementation("stepspec cupy", False, stepspec_cupy, framework="cupy"),
    )
}


def torch_optim_peers(names) -> list[str]:
    return [name for name in names if name.startswith("torch.optim")]


# --------------------------------------------------------------------------- measuring


def shapes(n: int, tensors: int) -> list[tuple[int, ...]]:
    """n parameters as ``tensors`` tensors of varied sizes (weights 1 to 4), matrices (2, ·) and vectors
    alternating, as in a stack of linear layers."""
    if tensors == 1:
        return [(n,)]
    weights = [1 + i % 4 for i in range(tensors)]
    sizes = [n * w // sum(weights) for w in weights]
    sizes[-1] += n - sum(sizes)
    return [(2, s // 2) if i % 2 == 0 and s % 2 == 0 else (s,) for i, s in enumerate(sizes)]


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def quiet_stderr():
    """The C++ profiler's start and stop lines on file descriptor 2, discarded."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Allocations:
    """Bytes allocated in a block, from the allocator: ``net`` (what outlives the block) and ``peak``."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
            )
            with quiet_stderr():
                self.profiler.__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.net = torch.cuda.memory_allocated(self.device) - self.before
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.before
            return
        with quiet_stderr():
            self.profiler.__exit__(*exc)
        records = sorted(
            (e for e in self.profiler.profiler.kineto_results.events() if e.name() == "[memory]"),
            key=lambda e: e.start_ns(),
        )
        running = list(itertools.accumulate((e.nbytes() for e in records), initial=0))
        self.net, self.peak = running[-1], max(running)


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}
"""wall: elapsed time, the figure that counts. thread: the calling thread's CPU time, for a single-threaded
CPU run on a loaded machine — time the thread spent descheduled is not counted (cache contention is)."""


def timed(function: Callable, device: torch.device, clock: Callable = time.perf_counter) -> float:
    synchronize(device)
    start = clock()
    function()
    synchronize(device)
    return clock() - start


def copy_bandwidth(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """The device's copy bandwidth in GB/s: the best of 20 copies of n elements (n read, n written), the
    speed of light any elementwise step can reach."""
    source = torch.ones(n, dtype=dtype, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    best = min(timed(lambda: target.copy_(source), device) for _ in range(20))
    return 2 * n * source.element_size() / best / 1e9


def graphs_compiled() -> int:
    """Graphs torch.compile has compiled in this process so far."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@dataclass(frozen=True)
class Settings:
    repeats: int  # rounds at least
    budget: float  # seconds of rounds per case, beyond the minimum
    clock: Callable = time.perf_counter
    warmup: int = 2


def measure_case(
    workload, n, tensors, dtype, device, implementations, settings, traffic, profile, copy_gbs
) -> list[dict]:
    """Every implementation on one (algorithm, n, layout): time, memory, traffic; one row each. Each case
    starts from empty compilation caches, as one training process with one model would: the variants of
    earlier cases would otherwise count against the passes' recompile limit (on-disk caches still apply)."""
    torch._dynamo.reset()
    _fused._uncompilable.clear()
    generator = torch.Generator().manual_seed(n + tensors)
    layout = shapes(n, tensors)
    scale = 1 / math.sqrt(n) if workload.unit_norm else 1.0
    params = [(scale * torch.randn(s, generator=generator, dtype=dtype)).to(device) for s in layout]
    grads = [(scale * torch.randn(s, generator=generator, dtype=dtype)).to(device) for s in layout]

    def copies():
        return [p.clone() for p in params], [g.clone() for g in grads]

    steppers, setup = {}, {}
    for implementation in implementations:
        own = copies()
        start = time.perf_counter()
        stepper = implementation.build(workload, *own)
        if stepper is None:
            continue
        stepper.step()  # the first step: lazy state, compilation
        synchronize(device)
        steppers[implementation.name], setup[implementation.name] = stepper, time.perf_counter() - start
    if not steppers:
        return []
    for stepper in steppers.values():
        for _ in range(settings.warmup):
            stepper.step()

    names = list(steppers)
    times = {name: [] for name in names}
    compiled_before = graphs_compiled()
    jax_compiled_before = {name: s.compilations() for name, s in steppers.items() if s.compilations}
    started = time.perf_counter()
    for round_ in itertools.count():
        if round_ >= settings.repeats and (time.perf_counter() - started > settings.budget or round_ >= 200):
            break
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            times[name].append(timed(steppers[name].step, device, settings.clock))
    if graphs_compiled() != compiled_before:
        print(
            f"    warning: {graphs_compiled() - compiled_before} graphs compiled while timing (recompiling per step?)"
        )
    compilations = {name: steppers[name].compilations() for name in jax_compiled_before}
    for name, before in jax_compiled_before.items():
        if compilations[name] != before:
            print(f"    warning: {name} compiled {compilations[name] - before} programs while timing (recompiling?)")

    itemsize = torch.empty((), dtype=dtype).element_size()
    model = traffic.get(workload.algo)
    rows = []
    for implementation in implementations:
        name = implementation.name
        if name not in steppers:
            continue
        memory = None
        if implementation.framework == "torch":  # the allocator's records see torch's tensors only
            own = copies()
            with Allocations(device) as kept:
                fresh = implementation.build(workload, *own)
                fresh.step()
            with Allocations(device) as during:
                fresh.step()
            del fresh
            memory = {
                "kept_bytes_per_parameter": kept.net / n,
                "peak_step_bytes_per_parameter": during.peak / n,
                "outliving_step_bytes": during.net,
            }
        median = statistics.median(times[name])
        quartiles = statistics.quantiles(times[name], n=4) if len(times[name]) > 1 else [median] * 3
        parts = {
            part: statistics.median(timed(function, device, settings.clock) for _ in range(settings.repeats)) * 1e3
            for part, function in steppers[name].parts.items()
        }
        row = {
            "algorithm": workload.algo,
            "device": str(device),
            "n": n,
            "tensors": tensors,
            "implementation": name,
            "peer": implementation.peer,
            "framework": implementation.framework,
            "median_ms": median * 1e3,
            "q1_ms": quartiles[0] * 1e3,
            "q3_ms": quartiles[2] * 1e3,
            "repeats": len(times[name]),
            "setup_s": setup[name],
            "parts_ms": parts,
            "compilations": compilations.get(name),
            "kept_bytes_per_parameter": memory and memory["kept_bytes_per_parameter"],
            "peak_step_bytes_per_parameter": memory and memory["peak_step_bytes_per_parameter"],
            "outliving_step_bytes": memory and memory["outliving_step_bytes"],
            "spec_state_bytes_per_parameter": model.state * itemsize if model else None,
            "traffic_bytes": (model.reads + model.writes) * n * itemsize if model else None,
        }
        row["bandwidth_gbs"] = row["traffic_bytes"] / median / 1e9 if model else None
        row["copy_bandwidth_fraction"] = row["bandwidth_gbs"] / copy_gbs if model else None
        rows.append(row)
        if profile and not implementation.peer and n >= SPEED_FROM:
            trace = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            with quiet_stderr():
                trace.__enter__()
            steppers[name].step()
            synchronize(device)
            with quiet_stderr():
                trace.__exit__(None, None, None)
            print(f"    profile of one step, {name}:")
            print(trace.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    return rows


# --------------------------------------------------------------------------- reporting


def _cells(rows):
    cells = {}
    for row in rows:
        cells.setdefault((row["algorithm"], row["tensors"], row["n"]), {})[row["implementation"]] = row
    return cells


def reference_time(cell: dict, against: str | None) -> tuple[str, float] | None:
    """(name, median ms) of ``against`` in the cell, or of its fastest torch.optim variant."""
    names = [against] if against else torch_optim_peers(cell)
    present = [(cell[name]["median_ms"], name) for name in names if name in cell]
    return (min(present)[1], min(present)[0]) if present else None


def ratio_table(rows) -> list[str]:
    """Markdown: per cell, the fastest torch.optim variant's time and every implementation's ratio to it."""
    names = list(dict.fromkeys(row["implementation"] for row in rows))
    lines = [
        "| algorithm | tensors | n | fastest torch.optim (ms) | " + " | ".join(names) + " |",
        "|" + " --- |" * (4 + len(names)),
    ]
    for (algo, tensors, n), cell in sorted(_cells(rows).items()):
        reference = reference_time(cell, None)
        base = f"{reference[1]:.3g} ({reference[0].removeprefix('torch.optim ')})" if reference else "—"
        ratios = [
            f"{cell[name]['median_ms'] / reference[1]:.2f}×"
            if reference and name in cell
            else (f"{cell[name]['median_ms']:.3g} ms" if name in cell else "—")
            for name in names
        ]
        lines.append(f"| {algo} | {tensors} | {n:.0e} | {base} | " + " | ".join(ratios) + " |")
    return lines


def _slope(points) -> float | None:
    """Least-squares slope of log(time) against log(n)."""
    if len(points) < 2:
        return None
    xs, ys = [math.log(n) for n, _ in points], [math.log(t) for _, t in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def evaluate_targets(rows) -> list[dict]:
    """Every target the run can judge, per stepspec implementation: speed (worst ratio from SPEED_FROM),
    per-step overhead, linearity and memory for torch (issue 11's TARGETS); speed and linearity for jax
    against optax (issue 12's JAX_TARGETS); on CUDA, LM-RLLC of the cupy backend against torch's fused
    momentum and the copy-bandwidth fractions (issue 13's CUPY_TARGETS and BANDWIDTH_TARGET)."""
    cells = _cells(rows)
    verdicts = []
    for framework, targets in (("torch", TARGETS), ("jax", JAX_TARGETS), ("cupy", CUPY_TARGETS)):
        ours = [
            name
            for name in dict.fromkeys(row["implementation"] for row in rows)
            if any(r["implementation"] == name and not r["peer"] and r["framework"] == framework for r in rows)
        ]
        verdicts += _verdicts(cells, targets, ours)
    return verdicts + _bandwidth_verdicts(rows)


def _bandwidth_verdicts(rows) -> list[dict]:
    """The worst copy-bandwidth fraction from BANDWIDTH_FROM, per algorithm and implementation, on CUDA."""
    verdicts = []
    for algo, name in itertools.product(BANDWIDTH_ALGORITHMS, BANDWIDTH_IMPLEMENTATIONS):
        mine = [
            r
            for r in rows
            if r["algorithm"] == algo
            and r["implementation"] == name
            and r["n"] >= BANDWIDTH_FROM
            and r.get("device", "").startswith("cuda")
            and r["copy_bandwidth_fraction"] is not None
        ]
        if mine:
            worst = min(mine, key=lambda r: r["copy_bandwidth_fraction"])
            verdicts.append(
                {
                    "target": f"{algo}: ≥ {BANDWIDTH_TARGET:.0%} of the copy bandwidth from n = {BANDWIDTH_FROM:.0e}",
                    "implementation": name,
                    "value": worst["copy_bandwidth_fraction"],
                    "bound": BANDWIDTH_TARGET,
                    "where": f"n = {worst['n']:.0e}, {worst['tensors']} tensors",
                    "met": worst["copy_bandwidth_fraction"] >= BANDWIDTH_TARGET,
                }
            )
    return verdicts


def _verdicts(cells, targets, ours) -> list[dict]:
    verdicts = []
    for target in targets:
        for name in ours:
            mine = {key: cell[name] for key, cell in cells.items() if key[0] == target.algo and name in cell}
            if not mine:
                continue
            ratios = []
            for (_, tensors, n), row in mine.items():
                reference = reference_time(cells.get((target.peer, tensors, n), {}), target.against)
                if reference and n >= SPEED_FROM:
                    ratios.append((row["median_ms"] / reference[1], n, tensors))
            if ratios:
                worst = max(ratios)
                verdicts.append(
                    {
                        "target": target.describe(),
                        "implementation": name,
                        "value": worst[0],
                        "bound": target.bound,
                        "where": f"n = {worst[1]:.0e}, {worst[2]} tensors",
                        "met": worst[0] <= target.bound,
                    }
                )
            small = mine.get((target.algo, OVERHEAD_TENSORS, OVERHEAD_N))
            foreach = cells.get((target.peer, OVERHEAD_TENSORS, OVERHEAD_N), {}).get("torch.optim foreach")
            if small and foreach and target.against != "optax (jit)":
                value = small["median_ms"] / foreach["median_ms"]
                verdicts.append(
                    {
                        "target": f"{target.algo}: per-step overhead ≤ {OVERHEAD_BOUND:g}× torch.optim foreach "
                        f"{target.peer}",
                        "implementation": name,
                        "value": value,
                        "bound": OVERHEAD_BOUND,
                        "where": f"n = {OVERHEAD_N:.0e}, {OVERHEAD_TENSORS} tensors",
                        "met": value <= OVERHEAD_BOUND,
                    }
                )
            for tensors in sorted({key[1] for key in mine}):
                series = sorted((key[2], row["median_ms"]) for key, row in mine.items() if key[1] == tensors)
                slope = _slope([p for p in series if p[0] >= LINEAR_FROM])
                peers = [
                    (n, reference_time(cells[(target.peer, tensors, n)], target.against))
                    for n, _ in series
                    if n >= LINEAR_FROM and (target.peer, tensors, n) in cells
                ]
                reference_slope = _slope([(n, r[1]) for n, r in peers if r])
                if slope is not None and reference_slope is not None:
                    verdicts.append(
                        {
                            "target": f"{target.algo}: cost linear in n from {LINEAR_FROM:.0e} (log-log slope ≤ "
                            f"reference's {reference_slope:.2f} + {LINEAR_SLACK:g})",
                            "implementation": name,
                            "value": slope,
                            "bound": reference_slope + LINEAR_SLACK,
                            "where": f"{tensors} tensors",
                            "met": slope <= reference_slope + LINEAR_SLACK,
                        }
                    )
            largest = max(mine.values(), key=lambda row: (row["n"], row["tensors"]))
            if (
                largest["spec_state_bytes_per_parameter"] is not None
                and largest["kept_bytes_per_parameter"] is not None
            ):
                kept, expected = largest["kept_bytes_per_parameter"], largest["spec_state_bytes_per_parameter"]
                outliving = max(row["outliving_step_bytes"] for row in mine.values())
                verdicts.append(
                    {
                        "target": f"{target.algo}: kept memory = the spec's state ({expected:g} B/parameter), "
                        "nothing n-sized outlives a step",
                        "implementation": name,
                        "value": kept,
                        "bound": expected,
                        "where": f"n = {largest['n']:.0e}; largest byte count a warm step left: {outliving}",
                        "met": kept <= expected + OUTLIVING_SLACK / largest["n"] and outliving <= OUTLIVING_SLACK,
                    }
                )
    return verdicts


def target_table(verdicts) -> list[str]:
    lines = ["| target | implementation | value | bound | where | met |", "|" + " --- |" * 6]
    for v in verdicts:
        lines.append(
            f"| {v['target']} | {v['implementation']} | {v['value']:.3g} | {v['bound']:.3g} | {v['where']} | "
            f"{'yes' if v['met'] else '**no**'} |"
        )
    return lines


def machine(device: torch.device) -> dict:
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        model = names[0] if names else model
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def plot(rows, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    algos = list(dict.fromkeys(row["algorithm"] for row in rows))
    columns = min(3, len(algos))
    lines = math.ceil(len(algos) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(5 * columns, 4 * lines), squeeze=False)
    names = list(dict.fromkeys(row["implementation"] for row in rows))
    colours = {name: f"C{i}" for i, name in enumerate(names)}
    for ax, algo in zip(axes.flat, algos):
        for (name, tensors), group in itertools.groupby(
            sorted(
                (r for r in rows if r["algorithm"] == algo), key=lambda r: (r["implementation"], r["tensors"], r["n"])
            ),
            key=lambda r: (r["implementation"], r["tensors"]),
        ):
            group = list(group)
            ax.loglog(
                [r["n"] for r in group],
                [r["median_ms"] for r in group],
                "o-" if tensors == 1 else "s--",
                color=colours[name],
                label=f"{name}, {tensors} tensor{'s' if tensors > 1 else ''}",
                markersize=3,
            )
        ax.set_title(algo)
        ax.set_xlabel("parameters n")
        ax.set_ylabel("ms per step")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(algos) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --------------------------------------------------------------------------- main


def _sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 1e3, 1e4, 1e6, fewer repeats: under 5 minutes")
    parser.add_argument("--algorithms", help="comma-separated algorithm ids (default: every workload)")
    parser.add_argument("--sizes", type=_sizes, help="comma-separated n (default 1e3 … 1e7, and 1e8 on CUDA)")
    parser.add_argument("--tensors", type=_sizes, default=[1, 100], help="layouts: tensors per structure")
    parser.add_argument("--implementations", help="comma-separated names (default: all); " + ", ".join(IMPLEMENTATIONS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's, the cores)")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall", help="thread: CPU time, with --threads 1")
    parser.add_argument("--profile", action="store_true", help="print torch's profile of stepspec's steps from 1e6")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread" and (device.type != "cpu" or torch.get_num_threads() != 1):
        parser.error("--clock thread measures one CPU thread: use it with --device cpu --threads 1")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    default_sizes = [10**3, 10**4, 10**6] if args.quick else [10**3, 10**4, 10**5, 10**6, 10**7]
    sizes = args.sizes or default_sizes + ([10**8] if device.type == "cuda" and not args.quick else [])
    clock = CLOCKS[args.clock]
    settings = Settings(5, 0.2, clock) if args.quick else Settings(15, 1.0, clock)
    algos = args.algorithms.split(",") if args.algorithms else list(WORKLOADS)
    unknown = [a for a in algos if a not in WORKLOADS]
    if unknown:
        parser.error(f"unknown algorithms {unknown}; known: {', '.join(WORKLOADS)}")
    for target in TARGETS:  # a target's reference runs with it
        if target.algo in algos and target.peer not in algos:
            algos.append(target.peer)
    names = args.implementations.split(",") if args.implementations else list(IMPLEMENTATIONS)
    if set(names) - set(IMPLEMENTATIONS):
        parser.error(f"unknown implementations {sorted(set(names) - set(IMPLEMENTATIONS))}")
    implementations = [IMPLEMENTATIONS[name] for name in names]
    traffic = traffic_model()

    load_before = os.getloadavg()
    print(
        f"{args.dtype} on {device}; n = {', '.join(f'{n:.0e}' for n in sizes)}; tensors {args.tensors}; "
        f"load average {load_before[0]:.2f} on {os.cpu_count()} cores",
        flush=True,
    )
    copy_gbs = copy_bandwidth(device, dtype, 10**8 if device.type == "cuda" else 10**7)
    print(f"copy bandwidth: {copy_gbs:.1f} GB/s", flush=True)
    rows, started = [], time.perf_counter()
    for algo in algos:
        for tensors, n in itertools.product(args.tensors, sizes):
            if n < 2 * tensors:
                continue
            case = measure_case(
                WORKLOADS[algo], n, tensors, dtype, device, implementations, settings, traffic, args.profile, copy_gbs
            )
            if not case:
                print(f"  {algo}: no implementation", flush=True)
                break
            rows += case
            summary = ", ".join(
                f"{r['implementation']} {r['median_ms']:.3g} ms"
                + "".join(f" ({part} {ms:.3g})" for part, ms in r["parts_ms"].items())
                + (f" (first step {r['setup_s']:.1f} s)" if r["setup_s"] > 1 else "")
                + (f" ({r['compilations']} compilations)" if r["compilations"] is not None else "")
                for r in case
            )
            print(
                f"  [{time.perf_counter() - started:6.0f} s] {algo}, n = {n:.0e}, {tensors} tensors: {summary}",
                flush=True,
            )
    load_after = os.getloadavg()

    print("\nTime per step, as a ratio to the fastest torch.optim variant of the same algorithm:\n")
    print("\n".join(ratio_table(rows)))
    verdicts = evaluate_targets(rows)
    print("\nTargets (issues 11–13):\n")
    print("\n".join(target_table(verdicts)))
    loaded = max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1)
    if loaded:
        print(
            f"\nThe machine was loaded (load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on "
            f"{os.cpu_count()} cores): these figures are not final."
        )

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": " ".join(["python", "benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(device),
        "load_average": {"before": load_before, "after": load_after, "loaded": loaded},
        "dtype": args.dtype,
        "device": str(device),
        "chunk": _fused.CHUNK,
        "clock": args.clock,
        "copy_bandwidth_gbs": copy_gbs,
        "seconds": time.perf_counter() - started,
        "rows": rows,
        "targets": verdicts,
    }
    stem = f"speed-{device.type}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    plot(rows, out / f"{stem}.png")
    print(f"\nwrote {out / (stem + '.json')} and {stem}.png ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
