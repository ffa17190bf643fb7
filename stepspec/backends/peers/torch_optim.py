"""torch's own optimizers under the suite (spec/classical.md#peers): ``torch.optim.SGD`` (plain → sgd,
momentum → momentum, nesterov → nag), ``Adam``, ``AdamW`` and ``RMSprop``, in each implementation torch
has — the for-loop one (``foreach=False``), ``foreach=True`` and ``fused=True`` — each a backend of its own.

The constructors take the spec's hyperparameters (spec/classical.md follows torch's names and defaults)
and map them onto torch's arguments; ``EXPECTED_FAILURES`` says where torch departs from the spec.
"""

from __future__ import annotations

import torch

from ._adapter import (
    DTYPES,
    NON_FINITE,
    NON_FINITE_PARAMS,
    UNCHECKED_VALUES,
    Key,
    Peer,
    PeerBackend,
    bind,
    build,
    expected_failures,
)

IMPLEMENTATIONS = {
    "forloop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
"""Implementation → the keyword that selects it (the for-loop one also passes ``fused=False`` where the class
has the argument: torch's default, None, picks foreach on CUDA)."""

ABSENT = {("fused", "rmsprop"): "torch.optim.RMSprop has no fused implementation in torch 2.13 (no `fused` argument)"}


def _selecting(cls, implementation: str) -> dict:
    flags = dict(IMPLEMENTATIONS[implementation])
    if implementation == "forloop" and cls is not torch.optim.RMSprop:
        flags["fused"] = False
    return flags


def _label(cls, flags: dict) -> str:
    return f"torch.optim.{cls.__name__}({', '.join(f'{k}={v}' for k, v in flags.items())})"


def _sgd_arguments(algo: str, hp: dict) -> dict:
    """sgd is SGD without momentum; momentum is SGD(momentum=β) (dampening 0, torch's default); nag is
    SGD(momentum=β, nesterov=True). torch refuses Nesterov with momentum 0, whose update (C5) is plain
    SGD's (C2): nag with β = 0 runs torch's plain SGD (spec/classical.md#peers)."""
    if algo == "sgd":
        return {"lr": hp["lr"]}
    return {"lr": hp["lr"], "momentum": hp["beta"], "nesterov": algo == "nag" and hp["beta"] != 0}


def _momentum_when_torch_keeps_none(hp: dict) -> dict:
    """With momentum 0 torch keeps no buffer; (C3) with β = 0 is m_t = g_t."""
    return {"m": lambda hp, previous, grads: [g.clone() for g in grads]} if hp["beta"] == 0 else {}


_ADAM_KEYS = (Key("step", "step", counter=True), Key("exp_avg", "m"), Key("exp_avg_sq", "v"))


def _peer(algo: str, implementation: str) -> Peer:
    if algo in ("sgd", "momentum", "nag"):
        flags = _selecting(torch.optim.SGD, implementation)
        return Peer(
            algo,
            _label(torch.optim.SGD, flags),
            lambda params, hp: torch.optim.SGD(params, **_sgd_arguments(algo, hp), **flags),
            () if algo == "sgd" else (Key("momentum_buffer", "m"),),
            (lambda hp: {}) if algo == "sgd" else _momentum_when_torch_keeps_none,
        )
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop}[algo]
    flags = _selecting(cls, implementation)
    keys = _ADAM_KEYS if algo != "rmsprop" else (Key("step", None, counter=True), Key("square_avg", "v"))
    return Peer(
        algo,
        _label(cls, flags),
        lambda params, hp: cls(params, **hp, **flags),
        keys,
    )


# --------------------------------------------------------------------------- constructors (the spec's signatures)


def sgd(lr, *, implementation, dtype):
    return build(_peer("sgd", implementation), {"lr": lr}, dtype)


def momentum(lr, beta=0.9, *, implementation, dtype):
    return build(_peer("momentum", implementation), {"lr": lr, "beta": beta}, dtype)


def nag(lr, beta=0.9, *, implementation, dtype):
    return build(_peer("nag", implementation), {"lr": lr, "beta": beta}, dtype)


def adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, implementation, dtype):
    hp = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
    return build(_peer("adam", implementation), hp, dtype)


def adamw(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *, implementation, dtype):
    hp = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
    return build(_peer("adamw", implementation), hp, dtype)


def rmsprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, *, implementation, dtype):
    hp = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay}
    return build(_peer("rmsprop", implementation), hp, dtype)


ALGORITHMS = {"sgd": sgd, "momentum": momentum, "nag": nag, "adam": adam, "adamw": adamw, "rmsprop": rmsprop}

# --------------------------------------------------------------------------- where torch departs from the spec

IN_PLACE_STEP = (
    "torch applies the step to θ in place, so the step is known only as θ_t − θ_(t−1), to within u·|θ|, and "
    "adam_first_step measures it on the scale of the step alone (|G| ≪ |θ| when λ ≠ 0). On the scale "
    "max(|G|, |θ|) of the equivalence properties torch's first step is within 2.1 u of the closed form "
    "(spec/classical.md#peers)"
)
UNCHECKED_COUNT = "load_state_dict takes any step count; the bias corrections 1 − β^t then divide by 0 at t = 0"
LR_ZERO = "torch accepts lr = 0: it checks lr ≥ 0, the spec's domain is (0, ∞)"
INFINITE = "torch accepts ∞: its checks (x ≥ 0) let it through"
EPS_ZERO = "torch accepts eps = 0 (it checks eps ≥ 0): a zero gradient entry at t = 1 is then 0/0"
SGD_NAN = (
    "defect: torch.optim.SGD accepts NaN, because its checks are `lr < 0.0` and `momentum < 0.0`, false for NaN "
    "(Adam, AdamW and RMSprop check `not 0.0 <= lr` and reject NaN)"
)
MOMENTUM_ONE = "torch.optim.SGD takes any momentum ≥ 0; the spec's [0, 1) keeps m bounded"
ALPHA_ONE = "torch.optim.RMSprop checks only alpha ≥ 0; with α = 1, v never moves from v_0 = 0"

_CASES = {
    "sgd": {
        UNCHECKED_VALUES: NON_FINITE,
        LR_ZERO: ("lr=0.0 outside (0, ∞)",),
        INFINITE: ("lr=inf outside (0, ∞)",),
        SGD_NAN: ("lr=nan outside (0, ∞)",),
    },
    **{
        algo: {
            UNCHECKED_VALUES: (*NON_FINITE, "state m NaN"),
            LR_ZERO: ("lr=0.0 outside (0, ∞)",),
            INFINITE: ("lr=inf outside (0, ∞)",),
            SGD_NAN: ("lr=nan outside (0, ∞)", "beta=nan outside [0, 1)"),
            MOMENTUM_ONE: ("beta=1.0 outside [0, 1)",),
        }
        for algo in ("momentum", "nag")
    },
    **{
        algo: {
            UNCHECKED_VALUES: (*NON_FINITE, *NON_FINITE_PARAMS, "state m NaN", "state v NaN"),
            UNCHECKED_COUNT: ("state step negative",),
            LR_ZERO: ("lr=0.0 outside (0, ∞)",),
            EPS_ZERO: ("eps=0.0 outside (0, ∞)",),
            INFINITE: ("lr=inf outside (0, ∞)", "eps=inf outside (0, ∞)", "weight_decay=inf outside [0, ∞)"),
        }
        for algo in ("adam", "adamw")
    },
    "rmsprop": {
        UNCHECKED_VALUES: (*NON_FINITE, *NON_FINITE_PARAMS, "state v NaN"),
        LR_ZERO: ("lr=0.0 outside (0, ∞)",),
        EPS_ZERO: ("eps=0.0 outside (0, ∞)",),
        INFINITE: ("lr=inf outside (0, ∞)", "eps=inf outside (0, ∞)", "weight_decay=inf outside [0, ∞)"),
        ALPHA_ONE: ("alpha=1.0 outside [0, 1)",),
    },
}

EXPECTED_FAILURES: dict[tuple, str] = {
    **expected_failures(("momentum", "nag", "adam", "adamw", "rmsprop"), _CASES),
    **{(algo, "adam_first_step"): IN_PLACE_STEP for algo in ("adam", "adamw")},
}
"""(algorithm, property[, case]) → why torch fails it, the same in every implementation and precision
(spec/classical.md#peers). The plugin turns each into a strict expected failure."""


def backend(name: str, peer: str, implementation: str, dtype: str) -> PeerBackend:
    """The backend ``torch.optim-<implementation>[-float32]``: every algorithm torch has in that implementation."""
    algorithms = {
        algo: bind(constructor, implementation=implementation, dtype=DTYPES[dtype])
        for algo, constructor in ALGORITHMS.items()
        if (implementation, algo) not in ABSENT
    }
    return PeerBackend(name, f"torch {torch.__version__}", dtype, algorithms, EXPECTED_FAILURES)
