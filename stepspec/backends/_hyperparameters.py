"""The hyperparameter checks the backends share (torch, jax, array API): the spec table's domains
(``stepspec.spec``) and what the spec's prose adds for ELRA, MetaOptimize, hypergradient descent, the RLLC family
and the Trainable Optimizer, written once for every backend; where a backend must convert a value (its own
arrays to the host, a centre to its own vector), it passes the conversion. The reference keeps its own, next to
the lines they guard, to be read with them."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np

from .._core import as_real_array
from ..errors import HyperparameterError, StateError
from ..reference.elra import AUTHORS_INITIAL_LR, PAPER_INITIAL_LR
from ..reference.metaoptimize import AUTHORS_CODE_EPS, PAPER_EPS
from ..spec import check_hyperparameters

# --------------------------------------------------------------------------- ELRA (spec/elra.md)

_ELRA_FLAGS = ("retrace", "initial_retrace", "batch_control", "gradient_decay", "boost")
_ELRA_COUNTS = {"period": 1, "warmup_steps": 0, "initial_multiple": 1}  # integer hyperparameters and their minimum
_ELRA_AUTHORS_CODE_HAS_NONE_OF = {
    "crop": None,
    "warmup_steps": 0,
    "batch_control": False,
    "gradient_decay": False,
    "weight_decay": 1.0,
}
"""Hyperparameter: its "off" value, which convention='authors_code' requires (spec/elra.md#authors-code)."""


def elra(algo: str, values: dict) -> dict:
    """The spec table's domains, then what its prose states: switches, integers, the crop, α_0 in
    [α_min, α_max], the floor below the crop and α_min below α_max; with convention='authors_code', none of
    what the authors' code lacks. ``elra``'s ``lr=None`` is α_0's default: 1e-3, or 1e-5 with
    convention='authors_code'."""
    if algo == "elra" and values["lr"] is None:
        values["lr"] = AUTHORS_INITIAL_LR if values["convention"] == "authors_code" else PAPER_INITIAL_LR
    flags = {name: values.pop(name) for name in _ELRA_FLAGS}
    counts = {name: values.pop(name) for name in _ELRA_COUNTS}
    crop = values.pop("crop")
    hp = check_hyperparameters(algo, **values)
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise HyperparameterError(name, f"must be True or False, got {value!r}")
    for name, value in counts.items():
        low = _ELRA_COUNTS[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise HyperparameterError(name, f"must be an integer ≥ {low}, got {value!r}")
    if crop is not None:
        if isinstance(crop, bool) or not isinstance(crop, numbers.Real) or not (math.isfinite(crop) and crop > 0):
            raise HyperparameterError("crop", f"must be None or a real number in (0, ∞), got {crop!r}")
        crop = float(crop)
        if hp["warmup_floor"] >= crop:
            raise HyperparameterError("warmup_floor", f"must be below crop = {crop}: the floor and the crop contradict")
    if hp["lr_min"] >= hp["lr_max"]:
        raise HyperparameterError("lr_min", f"must be below lr_max = {hp['lr_max']}, got {hp['lr_min']}")
    if not hp["lr_min"] <= hp["lr"] <= hp["lr_max"]:
        raise HyperparameterError(
            "lr", f"must lie in [lr_min, lr_max] = [{hp['lr_min']}, {hp['lr_max']}], got {hp['lr']}"
        )
    checked = {**hp, **flags, **{name: int(value) for name, value in counts.items()}, "crop": crop}
    if checked.get("convention") == "authors_code":
        for name, off in _ELRA_AUTHORS_CODE_HAS_NONE_OF.items():
            if checked[name] != off:
                raise HyperparameterError(
                    name,
                    f"convention='authors_code' reproduces the January-2024 code, which has no {name}: leave it at "
                    f"{off!r} (spec/elra.md#authors-code)",
                )
    return checked


# --------------------------------------------------------------------------- MetaOptimize (spec/metaoptimize.md)


def metaoptimize(
    base,
    meta,
    alpha0,
    eta,
    gamma,
    sigma,
    approximation,
    hessian,
    clip_decay,
    order,
    convention,
    rho,
    lam,
    c,
    kappa,
    eps,
    meta_rho,
    meta_lam,
    meta_c,
    meta_kappa,
    meta_eps,
) -> tuple[dict, frozenset]:
    """(the checked hyperparameters, the observation fields the configuration needs); ``eps`` and ``meta_eps``
    None take the convention's: 1e-8 (paper), 1e-10 (authors_code). ``blocks`` is the backend's to check (it
    becomes a native array)."""
    convention_eps = AUTHORS_CODE_EPS if convention == "authors_code" else PAPER_EPS
    hp = check_hyperparameters(
        "metaoptimize",
        base=base,
        meta=meta,
        alpha0=alpha0,
        eta=eta,
        gamma=gamma,
        sigma=sigma,
        approximation=approximation,
        hessian=hessian,
        order=order,
        convention=convention,
        rho=rho,
        lam=lam,
        c=c,
        kappa=kappa,
        eps=convention_eps if eps is None else eps,
        meta_rho=meta_rho,
        meta_lam=meta_lam,
        meta_c=meta_c,
        meta_kappa=meta_kappa,
        meta_eps=convention_eps if meta_eps is None else meta_eps,
    )
    if not isinstance(clip_decay, bool):
        raise HyperparameterError("clip_decay", f"must be True or False, got {clip_decay!r}")
    if clip_decay and hessian != "diagonal":
        raise HyperparameterError("clip_decay", "clips IDBD's diagonal decay factor: it needs hessian='diagonal'")
    if approximation == "full" and hessian == "diagonal":
        raise HyperparameterError("hessian", "the full approximation needs the exact Hessian (or none: 'free')")
    if order == "meta_first" and approximation == "full":
        raise HyperparameterError("order", "meta_first is defined for the 2x2 and L approximations only")
    if convention == "authors_code" and (approximation == "full" or hessian != "free" or order != "base_first"):
        raise HyperparameterError(
            "convention", "the authors' code is the Hessian-free 2x2 or L algorithm in Algorithm 1's order"
        )
    needs = {"grad"}
    if hp["kappa"] != 0:
        needs.add("params")
    if hessian != "free":
        needs.add("hvp")
        if approximation == "full":
            needs.add("third")
    return hp, frozenset(needs)


# --------------------------------------------------------------------------- hypergradient (spec/hypergradient.md)


def hypergradient(
    base, alpha0, hypergradient_lr, betas, eps, convention, momentum, nesterov, weight_decay
) -> tuple[dict, frozenset]:
    """(the checked hyperparameters, nesterov among them; the observation fields the configuration needs)."""
    hp = check_hyperparameters(
        "hypergradient",
        base=base,
        alpha0=alpha0,
        hypergradient_lr=hypergradient_lr,
        betas=betas,
        eps=eps,
        convention=convention,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    if not isinstance(nesterov, bool):
        raise HyperparameterError("nesterov", f"must be True or False, got {nesterov!r}")
    if base == "adam" and (momentum or nesterov):
        name = "nesterov" if nesterov else "momentum"
        raise HyperparameterError(name, "is an option of SGD-HD; Adam-HD's momentum is betas[0]")
    if nesterov and not momentum:
        raise HyperparameterError("nesterov", "Nesterov momentum needs momentum > 0 (as the authors' SGDHD requires)")
    needs = frozenset({"grad", "params"}) if hp["weight_decay"] else frozenset({"grad"})
    return {**hp, "nesterov": nesterov}, needs


# --------------------------------------------------------------------------- the RLLC family (spec/rllc.md)
# B, a and the laws are checked on the host in float64. ``to_host`` is the backend's conversion of its own arrays
# (a tensor on a device, a namespace array) to a host array, returning any other value unchanged; without one,
# NumPy reads the value as given (a jax array included).


def _as_given(value):
    return value


def _host_array(name: str, value, to_host: Callable) -> np.ndarray:
    """A real finite float64 array on the host, or HyperparameterError naming ``name``."""
    return as_real_array(name, to_host(value), HyperparameterError, dtype=np.float64)


def _host_vector(name: str, value, to_host: Callable, k: int | None = None) -> np.ndarray:
    v = _host_array(name, value, to_host)
    if v.ndim != 1:
        raise HyperparameterError(name, f"must be a vector of shape (k,), got shape {v.shape}")
    if k is not None and v.shape != (k,):
        raise HyperparameterError(name, f"must have shape ({k},), got {v.shape}")
    return v


def _propagator(B, a, to_host: Callable) -> dict:
    """(B, a) of eq. (1): B a real k×k matrix, k ≥ 1, with spectral radius ρ(B) < 1; a ∈ ℝ^k."""
    B = _host_array("B", B, to_host)
    if B.ndim != 2 or B.shape[0] != B.shape[1] or B.shape[0] == 0:
        raise HyperparameterError("B", f"must be a square k×k matrix with k ≥ 1, got shape {B.shape}")
    radius = float(np.max(np.abs(np.linalg.eigvals(B))))
    if not radius < 1:
        raise HyperparameterError(
            "B", f"spectral radius ρ(B) = {radius:.6g} must be < 1, or the memory does not forget (spec/rllc.md)"
        )
    return {"B": B, "a": _host_vector("a", a, to_host, B.shape[0])}


def _unit_gain(B: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The default L0 of spec/rllc.md#lm_rllc: w/‖w‖² with w = (I − B)⁻ᵀa, the minimum-norm law whose
    steady-state step under a constant gradient is −c1 g."""
    w = np.linalg.solve(np.eye(len(a)) - B.T, a)
    if not w @ w > 0:
        raise HyperparameterError("L0", "the default unit-gain law is undefined for a = 0; pass L0")
    return w / (w @ w)


def rllc(rule, c1, c2, L0, eps, to_host: Callable = _as_given) -> dict:
    """RLLC's rule (a callable), c1, c2, ε and L0 (k ≥ 1 entries; host float64), checked."""
    if not callable(rule):
        raise HyperparameterError("rule", f"must be callable U(M, H, g) -> (M', H'), got {type(rule).__name__}")
    hp = check_hyperparameters("rllc", c1=c1, c2=c2, eps=eps)
    L0 = _host_vector("L0", L0, to_host)
    if L0.shape[0] == 0:
        raise HyperparameterError("L0", "must have k ≥ 1 entries")
    return {"L0": L0, **hp}


def lm_rllc(B, a, c1, c2, L0, eps, to_host: Callable = _as_given) -> dict:
    """LM-RLLC's B, a, c1, c2, ε and L0 checked (host float64 arrays); L0 None takes the unit-gain law."""
    propagator = _propagator(B, a, to_host)
    hp = check_hyperparameters("lm_rllc", c1=c1, c2=c2, eps=eps)
    k = len(propagator["a"])
    L0 = _unit_gain(**propagator) if L0 is None else _host_vector("L0", L0, to_host, k)
    return {**propagator, "L0": L0, **hp}


def linear_memory(B, a, L, to_host: Callable = _as_given) -> dict:
    """The fixed-law optimizer's B, a and L checked (host float64 arrays)."""
    propagator = _propagator(B, a, to_host)
    return {**propagator, "L": _host_vector("L", L, to_host, len(propagator["a"]))}


# --------------------------------------------------------------------------- TO (spec/trainable_optimizer.md)


def projection(radius, center, flat_center: Callable) -> dict:
    """The ball of (TO8): radius None (no projection) or in (0, ∞); center None (the origin) or, only with a
    radius, ``flat_center(center)``: the backend's one vector from a vector or a structure shaped like the
    parameters (raising HyperparameterError naming ``center`` on bad input)."""
    if radius is not None:
        if isinstance(radius, bool) or not isinstance(radius, numbers.Real):
            raise HyperparameterError("radius", f"must be None or a real number in (0, ∞), got {radius!r}")
        radius = float(radius)
        if not (math.isfinite(radius) and radius > 0):
            raise HyperparameterError("radius", f"must be None or a real number in (0, ∞), got {radius!r}")
    if center is not None:
        if radius is None:
            raise HyperparameterError("center", "is the centre of the projection ball: it needs a radius")
        center = flat_center(center)
    return {"radius": radius, "center": center}


STATE_BYTES_PER_ENTRY = 8
"""``max_memory`` counts (n² + n) entries of 8 bytes in every precision, as the spec's formula does."""


def check_full_state_size(n: int, max_memory) -> None:
    """The full TO's n² + n state entries must fit in max_memory bytes (checked at init, as the reference does)."""
    needed = (n * n + n) * STATE_BYTES_PER_ENTRY
    if needed > max_memory:
        raise StateError(
            "theta0",
            f"full TO with n = {n} needs (n² + n)·8 = {needed:,} bytes of state, above max_memory = "
            f"{max_memory:,.0f}; use diagonal_to or rank_one_to (O(n) memory), or raise max_memory",
        )


def check_center(center, n: int) -> None:
    """The centre (None: the origin) must have the parameters' n (checked at init, as the reference does)."""
    if center is not None and center.shape[0] != n:
        raise HyperparameterError("center", f"has shape {tuple(center.shape)}, but the parameters have n = {n}")
