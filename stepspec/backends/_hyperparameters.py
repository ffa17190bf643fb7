"""The hyperparameter checks the backends share (torch, jax): the spec table's domains (``stepspec.spec``) and
what the spec's prose adds for ELRA and MetaOptimize, written once for every backend. The reference keeps
its own, next to the lines they guard, to be read with them."""

from __future__ import annotations

import math
import numbers

from ..errors import HyperparameterError
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
    what the authors' code lacks."""
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
