"""Lion from two packages under the suite (spec/classical.md#peers), both optional: ``lion-pytorch``
(``lion_pytorch.Lion``) and ``pytorch-optimizer`` (``pytorch_optimizer.Lion``, its for-loop and its foreach
implementation). Both keep only the momentum m (``exp_avg``); the spec's c_t = β1 m_{t−1} + (1 − β1) g_t
(C15), whose sign the step applies, is derived by the adapter. Both apply the weight decay as (C17) does,
θ ← θ(1 − lr λ) before the sign step: lion-pytorch with its default ``decoupled_weight_decay=False``,
pytorch-optimizer with its defaults ``weight_decouple=True, fixed_decay=False``.
"""

from __future__ import annotations

import importlib
import importlib.metadata

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

PACKAGES = {"lion-pytorch": "lion_pytorch", "pytorch-optimizer": "pytorch_optimizer"}
"""Distribution → module."""

IMPLEMENTATIONS = {None: {}, "forloop": {"foreach": False}, "foreach": {"foreach": True}}


def _interpolation(hp: dict, previous, grads: list) -> list:
    """(C15) c_t = β1 m_{t−1} + (1 − β1) g_t, from the peer's m_{t−1}."""
    beta1 = hp["betas"][0]
    return [m.mul(beta1).add_(g, alpha=1 - beta1) for m, g in zip(previous.per_parameter("m"), grads)]


def lion(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, *, peer, dtype):
    return build(peer, {"lr": lr, "betas": betas, "weight_decay": weight_decay}, dtype)


def backend(name: str, package: str, implementation: str | None, dtype: str) -> PeerBackend:
    """The backend of ``package``'s Lion (in ``implementation``, for pytorch-optimizer); a package that is not
    installed is a ModuleNotFoundError that says so."""
    try:
        module = importlib.import_module(PACKAGES[package])
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"{package} is not installed (an optional peer: pip install {package})") from None
    flags = IMPLEMENTATIONS[implementation]
    shown = ", ".join(f"{k}={v}" for k, v in flags.items())
    peer = Peer(
        "lion",
        f"{PACKAGES[package]}.Lion({shown})",
        lambda params, hp: module.Lion(params, **hp, **flags),
        (Key("exp_avg", "m"),),
        lambda hp: {"c": _interpolation},
    )
    version = f"{package} {importlib.metadata.version(package)}"
    algorithms = {"lion": bind(lion, peer=peer, dtype=DTYPES[dtype])}
    return PeerBackend(name, version, dtype, algorithms, EXPECTED_FAILURES[package])


# --------------------------------------------------------------------------- where the packages depart from the spec

_VALUES = (*NON_FINITE, *NON_FINITE_PARAMS, "state m NaN", "state c NaN")
INFINITE_LR = "the package accepts lr = ∞: its check (lr > 0, lr ≥ 0) lets ∞ through"
EXPECTED_FAILURES: dict[str, dict[tuple, str]] = {
    "lion-pytorch": expected_failures(
        ("lion",),
        {
            "lion": {
                UNCHECKED_VALUES: _VALUES,
                INFINITE_LR: ("lr=inf outside (0, ∞)",),
                "lion-pytorch asserts 0 ≤ β ≤ 1: it accepts β = 1 (β1 = 1 ignores g_t, β2 = 1 freezes m at m_0)": (
                    "betas=(1.0, 0.0), entry 0 outside [0, 1)",
                    "betas=(0.0, 1.0), entry 1 outside [0, 1)",
                ),
                "defect: lion-pytorch checks each entry of betas, not their number; a betas of one entry passes "
                "the constructor and the first step() fails unpacking it (ValueError)": (
                    "betas with one entry too few",
                ),
                "defect: lion-pytorch does not check weight_decay; a negative, NaN or infinite one is used as "
                "given, and a string fails only in the first step() (TypeError)": (
                    "weight_decay=nan outside [0, ∞)",
                    "weight_decay=-1e-12 outside [0, ∞)",
                    "weight_decay=-1.0 outside [0, ∞)",
                    "weight_decay=inf outside [0, ∞)",
                    "weight_decay a string",
                ),
            }
        },
    ),
    "pytorch-optimizer": expected_failures(
        ("lion",),
        {
            "lion": {
                UNCHECKED_VALUES: _VALUES,
                INFINITE_LR: ("lr=inf outside (0, ∞)",),
                "pytorch-optimizer accepts lr = 0: it checks lr ≥ 0, the spec's domain is (0, ∞)": (
                    "lr=0.0 outside (0, ∞)",
                ),
                "defect: pytorch-optimizer accepts NaN, because its checks are `lr < 0.0` and `weight_decay < 0.0`, "
                "false for NaN": ("lr=nan outside (0, ∞)", "weight_decay=nan outside [0, ∞)"),
                "pytorch-optimizer accepts weight_decay = ∞: its check (≥ 0) lets it through": (
                    "weight_decay=inf outside [0, ∞)",
                ),
            }
        },
    ),
}
"""Package → its expected failures (the same in each of its implementations and in both precisions)."""
