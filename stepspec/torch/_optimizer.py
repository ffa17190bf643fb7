"""``StepspecOptimizer``: a ``torch.optim.Optimizer`` over one functional torch optimizer of
``stepspec.backends.torch`` (spec/backends.md#drop-in-optimizers).

The functional optimizer does the work: ``step_(state, obs, params)`` advances a structured state and the
parameters in place. The adapter keeps that state in torch's ``self.state`` — each per-parameter field
(``PerParameter``: a tensor; ``Columns``: k tensors, or b lists of k) under its parameter, every other field
(counters, host scalars, RLLC's law L, ELRA's α and statistics) under the optimizer's first parameter, as
torch's LBFGS keeps its global state — and assembles the functional ``State`` over those very tensors for a
step, so ``state_dict()`` / ``load_state_dict()`` are torch's own.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch

from .. import reference
from .._core import Observation
from ..backends.torch import ALGORITHMS, _fused
from ..backends.torch._core import Columns, PerParameter, State, Structure, Whole
from ..errors import HyperparameterError, ObservationError

PRECISIONS = (torch.float32, torch.float64)
"""The parameter dtypes the drop-in optimizers accept: the precisions the conformance suite judges."""
COMPILE_MODES = (True, False, "auto")
"""``compile=``: the compiled fast path always (where the algorithm has one), never, or from
``_fused.AUTO_MIN_PARAMETERS`` parameters (spec/backends.md#compiled)."""
DEFAULT_PRECISION = (torch.float64, torch.device("cpu"))
"""An optimizer's precision before it has seen a parameter (a group added empty)."""


# --------------------------------------------------------------------------- the spec's signature


def spec_signature(algo: str, fixed: Mapping[str, Any]) -> inspect.Signature:
    """The constructor's signature, ``params`` first: the spec's hyperparameters with the spec's defaults
    (the reference constructor carries them), less those the class fixes."""
    spec = inspect.signature(reference.ALGORITHMS[algo])
    parameters = [p for name, p in spec.parameters.items() if name not in fixed]
    params = inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    compile_mode = inspect.Parameter("compile", inspect.Parameter.KEYWORD_ONLY, default="auto")
    return spec.replace(parameters=[params, *parameters, compile_mode])


def _portable(value):
    """A NumPy array hyperparameter (a propagator's B, a law) as a CPU tensor, so that a state_dict holding
    the param groups loads with ``torch.load(weights_only=True)``."""
    return torch.from_numpy(np.array(value)) if isinstance(value, np.ndarray) else value


def _same(a, b) -> bool:
    """Hyperparameter values equal (arrays and tensors by value, lists entrywise, callables by identity)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and (a.shape, a.dtype) == (b.shape, b.dtype)
            and bool(torch.equal(a, b.to(a.device)))
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False


# --------------------------------------------------------------------------- curvature by double backward


def _vector_jacobian(outputs, inputs, vectors, create_graph: bool = False) -> list[torch.Tensor]:
    """Σ_i vᵢ ∂outputᵢ/∂inputs through the autograd graph the closure built; outputs that do not depend on
    the inputs (a constant gradient) contribute zero."""
    pairs = [(o, v) for o, v in zip(outputs, vectors) if o.requires_grad]
    if not pairs:
        return [torch.zeros_like(x) for x in inputs]
    with torch.enable_grad():
        results = torch.autograd.grad(
            [o for o, _ in pairs],
            inputs,
            [v for _, v in pairs],
            retain_graph=True,
            create_graph=create_graph,
            allow_unused=True,
        )
    return [torch.zeros_like(x) if r is None else r for r, x in zip(results, inputs)]


def curvature_products(params: list[torch.Tensor]) -> tuple[Callable, Callable]:
    """(hvp, third) at the current parameters, from gradients computed with ``create_graph=True``:
    hvp(v) = ∇²f v, the gradient of ⟨∇f, v⟩; third(u, v) = ∇³f[u, v], the gradient of ⟨∇²f u, v⟩."""
    grads = [p.grad for p in params]

    def hvp(v):
        return _vector_jacobian(grads, params, v)

    def third(u, v):
        return _vector_jacobian(_vector_jacobian(grads, params, u, create_graph=True), params, v)

    return hvp, third


# --------------------------------------------------------------------------- state: torch's dict ⇄ a structured State


def is_per_parameter(layout) -> bool:
    """A layout stored per parameter (kept under each parameter in ``optimizer.state``); every other field
    is kept once, under the first parameter."""
    return isinstance(layout, (PerParameter, Columns))


def _columns_of(value, layout: Columns) -> list[list[torch.Tensor]]:
    """One parameter's Columns entry as [block][column]: stored as k tensors when the layout has one block,
    else as a list of blocks of k (a layout may learn its number of blocks only at init)."""
    return [value] if layout.blocks == 1 else value


def _parameter_columns(stored, i: int, layout: Columns):
    """Parameter i's share of a stored Columns field, in the form ``_columns_of`` reads."""
    blocks = [[column[i] for column in block] for block in stored]
    return blocks[0] if layout.blocks == 1 else blocks


def assemble(layouts: Mapping, structure: Structure, per_parameter: Sequence[dict], shared: dict) -> State:
    """The functional State over the tensors of ``per_parameter`` (one state dict per parameter of the
    structure, in order) and ``shared`` (the fields without n), without copying."""
    stored = {}
    for name, layout in layouts.items():
        if isinstance(layout, PerParameter):
            stored[name] = [s[name] for s in per_parameter]
        elif isinstance(layout, Columns):
            columns = [_columns_of(s[name], layout) for s in per_parameter]
            stored[name] = [
                [[c[b][j] for c in columns] for j in range(len(block))] for b, block in enumerate(columns[0])
            ]
        else:
            stored[name] = shared[name]
    return State(layouts, structure, stored)


def disassemble(layouts: Mapping, stored: dict, per_parameter: Sequence[dict], shared: dict | None) -> None:
    """Write a stored state back: per-parameter fields into each parameter's dict, the others into
    ``shared`` (every parameter's dict when ``shared`` is None: an elementwise algorithm's counters)."""
    for name, layout in layouts.items():
        value = stored[name]
        if isinstance(layout, PerParameter):
            for s, tensor in zip(per_parameter, value):
                s[name] = tensor
        elif isinstance(layout, Columns):
            for i, s in enumerate(per_parameter):
                s[name] = _parameter_columns(value, i, layout)
        elif shared is not None:
            shared[name] = value
        else:
            for s in per_parameter:
                s[name] = value


def _clone_tensors(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, list):
        return [_clone_tensors(v) for v in value]
    return value


# --------------------------------------------------------------------------- the adapter


class StepspecOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` running the functional torch optimizer of spec algorithm ``algorithm``.

    **Constructor.** ``(params, <the spec's hyperparameters, with the spec's defaults>)``; ``params`` is an
    iterable of tensors or of param-group dicts, as for every torch optimizer. Hyperparameters are
    validated by the functional constructor: a value outside its spec domain raises
    ``HyperparameterError`` naming it, at construction or in ``add_param_group``. All parameters share
    one dtype (float32 or float64) and one device, are real and dense; anything else is a
    ``HyperparameterError`` naming ``params[i]`` (i counts over all groups, as ``state_dict`` does).

    **Param groups.** An *elementwise* algorithm (no state or reduction across parameters: the classical
    ones and LinearMemory) runs each parameter as its own optimizer; parameters of a group whose counters
    agree are stepped together in one multi-tensor pass, so every hyperparameter may differ per group.
    Every other algorithm has global state (a law, step sizes, inner products): all groups form ONE
    structure, its reductions span all of them, and no hyperparameter may differ between groups
    (``HyperparameterError`` naming the first that does).

    **Parameters without a gradient** (``.grad is None``) are skipped, as torch does: their state stays as
    it is. For a global algorithm the step then runs over the parameters that have one — its reductions
    span only those. A parameter that gets its first gradient later starts from the spec's S_0 for its
    per-parameter fields. Where ``resizable`` is False — a state sized or stored by all parameters
    jointly: full TO's A, RLLC's rule state, IDBD non-linear's H, MetaOptimize's traces, a TO projection
    centre — every parameter needs a gradient at every step (``ObservationError`` naming ``params[i]``
    otherwise): leave frozen parameters out of such an optimizer.

    **step(closure=None).** Algorithms that need the loss or curvature products require a closure, as
    torch's LBFGS does: it zeroes the gradients, computes the loss, calls ``backward`` and returns the loss.
    It is called once per step, with gradients enabled. For Hessian-vector products (and third
    derivatives) the closure must call ``loss.backward(create_graph=True)``: hvp(v) is the gradient of
    ⟨∇f, v⟩ through that graph (double backward), taken at the parameters the closure saw. Set the
    gradients to None before the next closure (``zero_grad()`` does) so that the graph is freed.
    ``step`` returns the closure's loss (None without a closure).

    **Bad input.** The observation — every group's gradients, the loss, the curvature products — is
    checked before anything changes: a non-finite entry raises the reference's ``ObservationError`` naming
    the field (``grad``, ``params``, ``loss``, ``hvp``) and leaves every parameter and all state as they
    were. A sparse or complex gradient is an ``ObservationError`` naming ``params[i]``.

    **compile** (keyword-only, not a hyperparameter): ``"auto"`` (the default) runs the algorithm's
    compiled fast path (``torch.compile``, one elementwise pass per tensor after the step's one reduction
    round) from ``_fused.AUTO_MIN_PARAMETERS`` parameters, ``True`` always, ``False`` never; an algorithm
    without a fast path runs its eager multi-tensor step (spec/backends.md#compiled).

    **Host synchronisations per step**: the finite check (one per param group for an elementwise
    algorithm, one for a global one), the loss's ``.item()`` where the algorithm needs the loss, and the
    host decisions of the algorithm itself (spec/backends.md#drop-in-optimizers).
    """

    algorithm: ClassVar[str]
    """The spec's algorithm id (a key of ``stepspec.backends.torch.ALGORITHMS``)."""
    elementwise: ClassVar[bool] = False
    """True when the algorithm has no state or reduction across parameters; its non-per-parameter state
    fields are counters and host scalars, kept per parameter."""
    resizable: ClassVar[bool] = False
    """True when the set of parameters with gradients may change between steps (see the class docstring)."""
    fixed: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    """Hyperparameters the class fixes (``HypergradientSGD``: base='sgd'), absent from its signature."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "algorithm" in cls.__dict__ and cls.algorithm not in ALGORITHMS:
            raise TypeError(
                f"{cls.__name__}: algorithm {cls.algorithm!r} is not one the torch backend registers "
                f"(stepspec.backends.torch.ALGORITHMS: {', '.join(ALGORITHMS)})"
            )
        if "algorithm" in cls.__dict__ or "fixed" in cls.__dict__:
            cls.__signature__ = spec_signature(cls.algorithm, cls.fixed)

    def __init__(self, params, *args, compile="auto", **hyperparameters):
        spec = spec_signature(self.algorithm, self.fixed)
        bound = spec.bind(None, *args, **hyperparameters)
        bound.apply_defaults()
        if compile not in COMPILE_MODES:
            raise HyperparameterError("compile", f"must be one of {COMPILE_MODES}, got {compile!r}")
        self.compile = compile
        defaults = {
            name: _portable(value) for name, value in bound.arguments.items() if name not in ("params", "compile")
        }
        self._names = tuple(defaults) + tuple(self.fixed)
        self._functionals: dict[int, tuple[dict, tuple, Any]] = {}
        self._precision: tuple[torch.dtype, torch.device] | None = None
        super().__init__(params, {**defaults, **self.fixed})

    # -- hyperparameters and the functional optimizers ----------------------------------------

    @property
    def hyperparameter_names(self) -> tuple[str, ...]:
        """The algorithm's hyperparameters, as keys of every param group (torch adds its own to
        ``defaults``, such as ``differentiable``)."""
        return self._names

    def _hyperparameters(self, group: dict) -> dict:
        return {name: group[name] for name in self.hyperparameter_names}

    def _functional(self, index: int):
        """The functional optimizer of param group ``index``, rebuilt (and so validated) when a
        hyperparameter of the group has changed since, as an LR scheduler changes ``lr``."""
        hp = self._hyperparameters(self.param_groups[index])
        precision = self._precision or DEFAULT_PRECISION
        cached = self._functionals.get(index)
        if cached is not None and cached[1] == precision and all(_same(hp[k], v) for k, v in cached[0].items()):
            return cached[2]
        dtype, device = precision
        functional = ALGORITHMS[self.algorithm](**hp, dtype=dtype, device=device)
        self._functionals[index] = (hp, precision, functional)
        return functional

    def _check_groups_agree(self, index: int) -> None:
        """A global algorithm's groups form one structure: group ``index`` must have group 0's values."""
        if self.elementwise or index == 0:
            return
        first, this = self._hyperparameters(self.param_groups[0]), self._hyperparameters(self.param_groups[index])
        for name in self.hyperparameter_names:
            if not _same(first[name], this[name]):
                raise HyperparameterError(
                    name,
                    f"differs between param groups 0 ({first[name]!r}) and {index} ({this[name]!r}); "
                    f"{type(self).__name__}'s state spans all groups, so every hyperparameter is shared",
                )

    # -- param groups ---------------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group``, then the group's parameters and hyperparameters are checked; a
        rejected group is not added."""
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        group.update({name: _portable(group[name]) for name in self.hyperparameter_names})
        precision = self._precision
        try:
            self._check_parameters(index)
            self._functional(index)
            self._check_groups_agree(index)
        except Exception:
            self.param_groups.pop()
            self._functionals.pop(index, None)
            self._precision = precision
            raise

    def _check_parameters(self, index: int) -> None:
        offset = sum(len(g["params"]) for g in self.param_groups[:index])
        seen = set()
        for i, p in enumerate(self.param_groups[index]["params"], offset):
            where = f"params[{i}]"
            if p in seen:
                raise HyperparameterError("params", f"{where} appears twice in its param group")
            seen.add(p)
            if p.dtype not in PRECISIONS:
                raise HyperparameterError(
                    "params", f"{where} has dtype {p.dtype}; stepspec.torch runs in float32 or float64"
                )
            if p.layout != torch.strided:
                raise HyperparameterError("params", f"{where} is a {p.layout} tensor; parameters must be dense")
            if self._precision is None:
                self._precision = (p.dtype, p.device)
            elif (p.dtype, p.device) != self._precision:
                dtype, device = self._precision
                raise HyperparameterError(
                    "params",
                    f"{where} is {p.dtype} on {p.device}, params[0] is {dtype} on {device}: one optimizer "
                    f"runs in one dtype on one device",
                )

    # -- the step -------------------------------------------------------------------------------

    @property
    def _holder(self) -> torch.Tensor:
        """The parameter whose state entry also holds the global fields (torch's LBFGS uses the same)."""
        return self.param_groups[0]["params"][0]

    def _members(self) -> list[list[tuple[int, torch.Tensor]]]:
        """Per group, (index, parameter) of the parameters with a gradient; checked for sparse and complex
        gradients, dtype and device, and — where the state is not resizable — for missing gradients."""
        members, offset = [], 0
        for group in self.param_groups:
            present = []
            for i, p in enumerate(group["params"], offset):
                where = f"params[{i}]"
                if p.grad is None:
                    if not (self.elementwise or self.resizable):
                        raise ObservationError(
                            "grad",
                            f"{where} has no gradient; {type(self).__name__}'s state is sized by all its "
                            f"parameters jointly, so each needs a gradient at every step (leave frozen "
                            f"parameters out of the optimizer)",
                        )
                    continue
                if p.grad.layout != torch.strided:
                    raise ObservationError("grad", f"{where} has a sparse gradient ({p.grad.layout}); dense only")
                if p.grad.is_complex():
                    raise ObservationError("grad", f"{where} has a complex gradient ({p.grad.dtype})")
                if (p.dtype, p.device) != self._precision:
                    raise ObservationError(
                        "params", f"{where} is now {p.dtype} on {p.device}; the optimizer runs in {self._precision}"
                    )
                present.append((i, p))
            members.append(present)
            offset += len(group["params"])
        return members

    def _observation(self, functional, params: list[torch.Tensor], loss) -> Observation:
        needs = functional.needs
        hvp = third = None
        if needs & {"hvp", "third"}:
            if not any(p.grad.requires_grad for p in params):
                name = "hvp" if "hvp" in needs else "third"
                raise ObservationError(
                    name,
                    f"{type(self).__name__} needs curvature products by double backward: the closure must "
                    f"call loss.backward(create_graph=True)",
                )
            hvp, third = curvature_products(params)
        return Observation(
            grad=[p.grad for p in params],
            params=params if "params" in needs else None,
            loss=(loss.detach() if isinstance(loss, torch.Tensor) else loss) if "loss" in needs else None,
            hvp=hvp if "hvp" in needs else None,
            third=third if "third" in needs else None,
        )

    def _structure(self, params: list[torch.Tensor]) -> Structure:
        dtype, device = self._precision
        return Structure(tuple(p.shape for p in params), False, dtype, device)

    def step(self, closure=None):
        """One step of the algorithm on every parameter with a gradient; returns the closure's loss.
        See the class docstring for the closure contract and what is checked before anything changes."""
        functionals = [self._functional(i) for i in range(len(self.param_groups))]
        for i in range(len(self.param_groups)):
            self._check_groups_agree(i)
        needs = frozenset().union(*(f.needs for f in functionals))
        requires = sorted(needs & {"loss", "hvp", "third"})
        if closure is None and requires:
            raise ObservationError(
                requires[0],
                f"{type(self).__name__} needs {' and '.join(requires)}: call step(closure) with a closure that "
                "recomputes the loss, calls backward"
                + (" with create_graph=True" if "hvp" in needs or "third" in needs else "")
                + " and returns the loss",
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            if "loss" in needs and loss is None:
                raise ObservationError("loss", "the closure returned None; it must return the loss")
        members = self._members()
        if self.elementwise:
            self._step_each(functionals, members, loss)
        else:
            self._step_joint(functionals[0], [m for group in members for m in group], loss)
        return loss

    def _initial(self, functional, params: list[torch.Tensor]) -> dict:
        """S_0 of the functional optimizer over ``params``, stored."""
        with torch.no_grad():
            return functional.initial_state(self._structure(params), params)

    def _step_each(self, functionals, members, loss) -> None:
        """Elementwise: every group's observation is checked, then each group advances, its parameters
        partitioned by their counters (equal counters: one multi-tensor pass)."""
        checked = []
        for functional, present in zip(functionals, members):
            params = [p for _, p in present]
            if params:
                obs = self._observation(functional, params, loss)
                checked.append((functional, params, functional.check_observation(obs, self._structure(params))))
        for functional, params, step in checked:
            layouts = functional.layouts
            shared = [name for name, layout in layouts.items() if not is_per_parameter(layout)]
            new = [p for p in params if p not in self.state]
            if new:
                disassemble(layouts, self._initial(functional, new), [self.state[p] for p in new], None)
            parts: dict[tuple, list[int]] = {}
            for j, p in enumerate(params):
                parts.setdefault(tuple(self.state[p][name] for name in shared), []).append(j)
            for indices in parts.values():
                part = [params[j] for j in indices]
                states = [self.state[p] for p in part]
                state = assemble(layouts, self._structure(part), states, states[0])
                part_step = dataclasses.replace(
                    step,
                    grad=[step.grad[j] for j in indices],
                    params=None if step.params is None else [step.params[j] for j in indices],
                )
                _fused.advance_(functional, state, part_step, part, self.compile)
                disassemble(layouts, state.stored, states, None)

    def _step_joint(self, functional, present, loss) -> None:
        """Global state: one structure over the parameters with a gradient in every group. S_0 is created
        on the first step (and per-parameter fields for parameters new to it); a rejected observation
        removes what was created, so state and parameters stay as they were."""
        params = [p for _, p in present]
        if not params:
            return
        obs = self._observation(functional, params, loss)
        layouts = functional.layouts
        holder = self.state[self._holder]
        global_names = [name for name, layout in layouts.items() if not is_per_parameter(layout)]
        per_parameter_names = [name for name in layouts if name not in global_names]
        new = [p for p in params if per_parameter_names and per_parameter_names[0] not in self.state.get(p, {})]
        created_globals = [name for name in global_names if name not in holder]
        if new or created_globals:
            sources = params if created_globals else new  # S_0 over the whole structure on the first step
            fresh, fresh_globals = [{} for _ in sources], {}
            disassemble(layouts, self._initial(functional, sources), fresh, fresh_globals)
            holder.update({name: fresh_globals[name] for name in created_globals})
            new_ids = {id(p) for p in new}
            for p, entry in zip(sources, fresh):
                if id(p) in new_ids:
                    self.state[p].update(entry)
        try:
            state = assemble(layouts, self._structure(params), [self.state[p] for p in params], holder)
            _fused.advance_(functional, state, functional.check_observation(obs, state.structure), params, self.compile)
        except Exception:
            self._forget(new, per_parameter_names, created_globals)
            raise
        disassemble(layouts, state.stored, [self.state[p] for p in params], holder)

    def _forget(self, new: list[torch.Tensor], per_parameter_names: list[str], created_globals: list[str]) -> None:
        """Undo a step's state creation (its observation was rejected)."""
        holder = self._holder
        for p in new:
            for name in per_parameter_names:
                self.state[p].pop(name, None)
        for name in created_globals:
            self.state[holder].pop(name, None)
        for p in [*new, holder]:
            if p in self.state and not self.state[p]:
                del self.state[p]

    # -- state_dict -----------------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's ``load_state_dict``, then every state tensor is copied: torch's cast keeps the given
        tensors where dtype and device already match, and a step updates them in place. torch casts every
        tensor to its parameter's dtype and device; a global field of a layout other than ``Whole`` (a
        float64 step size in a float32 run, a host-side history) is the layout's business and is restored
        as it was saved."""
        super().load_state_dict(state_dict)
        for entry in self.state.values():
            for name, value in entry.items():
                entry[name] = _clone_tensors(value)
        if self.elementwise or self._holder not in self.state:
            return
        saved = state_dict["state"].get(state_dict["param_groups"][0]["params"][0], {})
        holder = self.state[self._holder]
        for name, layout in self._functional(0).layouts.items():
            if not (is_per_parameter(layout) or isinstance(layout, Whole)) and name in saved:
                holder[name] = _clone_tensors(saved[name])
