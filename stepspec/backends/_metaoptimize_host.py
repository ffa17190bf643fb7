"""What MetaOptimize's backends (torch, jax, array API) compute on the host, written once: the step-size block
partition, the base's constants derived in float64 from the hyperparameters (a float32 backend rounds each
once, where it meets an array), and the errors of an ``init`` override that the row-sparse form cannot hold
(spec/metaoptimize.md, spec/backends.md#metaoptimize). The arrays stay each backend's own."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import HyperparameterError, StateError

BLOCK_KINDS = ("scalar", "weightwise")


def _as_given(value):
    return value


def block_partition(blocks, to_host: Callable = _as_given):
    """'scalar', 'weightwise', or integer block ids 0…m−1 (each used), one per weight: a read-only host int64
    array. ``to_host`` is the backend's conversion of its own arrays to the host (raising HyperparameterError
    naming ``blocks`` where it checks more); without one, NumPy reads the value as given."""
    if isinstance(blocks, str):
        if blocks not in BLOCK_KINDS:
            raise HyperparameterError("blocks", f"must be 'scalar', 'weightwise' or block ids, got {blocks!r}")
        return blocks
    blocks = to_host(blocks)
    try:
        ids = np.asarray(blocks, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise HyperparameterError("blocks", f"is not an array of block ids ({exc})") from None
    if ids.ndim != 1 or ids.size == 0 or not np.all(np.isfinite(ids)) or np.any(ids != np.round(ids)) or ids.min() != 0:
        raise HyperparameterError("blocks", "must be a vector of integer block ids starting at 0, one per weight")
    ids = ids.astype(np.int64)
    missing = sorted(set(range(int(ids.max()) + 1)) - set(ids.tolist()))
    if missing:
        raise HyperparameterError("blocks", f"block ids {missing} are used by no weight: the blocks must cover 0…m−1")
    ids.flags.writeable = False
    return ids


def moment_constants(rho: float, lam: float, t: int) -> dict:
    """The base's constants at step t, in float64 on the host: 1 − ρ, 1 − λ, 2(1 − λ), the bias corrections
    b1 = 1 − ρᵗ, b2 = 1 − λᵗ and their quotients ((M8) adamw), the authors' μ = (1 − λ)/(1 − λᵗ), 2μ and μλ."""
    bias1, bias2 = 1.0 - rho**t, 1.0 - lam**t
    mu = (1.0 - lam) / bias2
    return {
        "one_minus_rho": 1.0 - rho,
        "one_minus_lam": 1.0 - lam,
        "two_one_minus_lam": 2.0 * (1.0 - lam),
        "bias1": bias1,
        "bias2": bias2,
        "one_minus_rho_bias1": (1.0 - rho) / bias1,
        "rho_bias1": rho / bias1,
        "lam_bias2": lam / bias2,
        "two_one_minus_lam_bias2": 2.0 * (1.0 - lam) / bias2,
        "mu": mu,
        "two_mu": 2.0 * mu,
        "mu_lam": mu * lam,
    }


def off_row_sparse_pattern(name: str, backend: str) -> StateError:
    """The error of an X or Q override with an entry outside column b(j) of weight j's rows."""
    return StateError(
        name,
        "must be zero outside column b(j) of weight j's rows: with hessian='free' or 'diagonal' every "
        f"state a run reaches has that pattern, and the {backend} backend stores only those entries",
    )


def off_diagonal_blocks(name: str) -> StateError:
    """The error of a Y override whose three m × m blocks are not diagonal."""
    return StateError(
        name, "must have diagonal blocks: with hessian='free' or 'diagonal' every state a run reaches does"
    )
