"""Jordan-block propagators and their union, spec/propagators.md (paper 000, Sec. 4–5).

A propagator is the pair (B, a) of a linear memory rule U(M, g) = M B + g aᵀ (eq. 1).
"""

from __future__ import annotations

import re
import warnings
from typing import NamedTuple

import numpy as np

from ..errors import NotationError, SpectralRadiusWarning
from .rllc import spectral_radius


class Propagator(NamedTuple):
    """(B, a) of eq. (1); unpacks into ``lm_rllc(*p, ...)`` and ``linear_memory(*p, L)``."""

    B: np.ndarray  # (k, k)
    a: np.ndarray  # (k,)


def _first_unit(k: int) -> np.ndarray:
    e = np.zeros(k)
    e[0] = 1.0
    return e


def jordan(lam: float, m: int = 1) -> Propagator:
    """M_m(λ) = (J_m(λ), e_1): λ on the diagonal, ones just above it (P1)."""
    B = lam * np.eye(m) + np.eye(m, k=1)
    return Propagator(B, _first_unit(m))


def complex_jordan(gamma: complex, m: int = 1) -> Propagator:
    """CM_m(α + βi) = (CJ_m(α + βi), e_1): 2×2 blocks [[α, −β], [β, α]] on the diagonal and 2×2
    identities just above it (P2, eq. 3)."""
    alpha, beta = complex(gamma).real, complex(gamma).imag
    block = np.array([[alpha, -beta], [beta, alpha]])
    B = np.kron(np.eye(m), block) + np.kron(np.eye(m, k=1), np.eye(2))
    return Propagator(B, _first_unit(2 * m))


def direct_sum(*propagators: Propagator) -> Propagator:
    """P_1 ⊕ … ⊕ P_r: block-diagonal B, concatenated a (P3)."""
    k = sum(p.B.shape[0] for p in propagators)
    B = np.zeros((k, k))
    offset = 0
    for p in propagators:
        size = p.B.shape[0]
        B[offset : offset + size, offset : offset + size] = p.B
        offset += size
    return Propagator(B, np.concatenate([p.a for p in propagators]))


# --------------------------------------------------------------------------- notation

_BLOCK = re.compile(r"^(CM|M)(?:_?\{?(\d+)\}?)?\((.+)\)$")
_REAL_CHARS = frozenset("0123456789.+-eE")  # excludes nan, inf and Python's digit separators

TABLE_1 = (
    "M(0.9)",
    "M(0.9) ⊕ M(0.0)",
    "M(0.9) ⊕ M(0.8) ⊕ M(0.7)",
    "M2(0.6)",
    "M(0.9) ⊕ M2(0.6)",
    "M(0.9) ⊕ M(0.0) ⊕ M2(0.6)",
    "M3(0.6)",
    "M(0.9) ⊕ M(−0.9) ⊕ CM(0.9i)",
)
"""The propagators of paper 000, Table 1, in the paper's notation."""


def _split_blocks(notation: str) -> list[str]:
    """Split at ⊕ or + outside parentheses (a + inside CM(0.3+0.2i) belongs to the number)."""
    blocks, depth, current = [], 0, []
    for ch in notation:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise NotationError("notation", f"unbalanced ')' in {notation!r}")
        if depth == 0 and ch in "⊕+":
            blocks.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise NotationError("notation", f"unbalanced '(' in {notation!r}")
    blocks.append("".join(current))
    return blocks


def _parse_real(text: str, block: str, notation: str) -> float:
    try:
        if not set(text) <= _REAL_CHARS:
            raise ValueError
        value = float(text)
    except ValueError:
        raise NotationError(
            "notation", f"M(λ) needs a real λ, got {text!r} in block {block!r} of {notation!r}"
        ) from None
    return value


def _parse_complex(text: str, block: str, notation: str) -> complex:
    try:
        if not set(text) <= _REAL_CHARS | {"i", "j"}:
            raise ValueError
        value = complex(text.replace("i", "j"))
    except ValueError:
        raise NotationError(
            "notation", f"CM(γ) needs a complex γ = α+βi, got {text!r} in block {block!r} of {notation!r}"
        ) from None
    return value


def propagator(notation: str) -> Propagator:
    """(B, a) from the paper's notation, e.g. ``"M(0.9) ⊕ M2(0.6) ⊕ CM(0.3+0.2i)"`` (spec/propagators.md).

    Blocks: ``M(λ)``, ``Mm(λ)`` / ``M_m(λ)`` / ``M_{m}(λ)``, ``CM(α+βi)``, ``CMm(α+βi)``; joined by ⊕ or +.
    Unicode minus (−) and ``j`` for the imaginary unit are accepted. A block with spectral radius |λ| ≥ 1
    (``M(1.5)``, ``CM(0.9+0.9i)``) is a valid matrix, outside lm_rllc's domain: it parses, with a
    ``SpectralRadiusWarning`` naming it.
    """
    if not isinstance(notation, str):
        raise NotationError("notation", f"must be a string such as 'M(0.9) ⊕ M(0)', got {type(notation).__name__}")
    text = re.sub(r"\s+", "", notation).replace("−", "-")
    if not text:
        raise NotationError("notation", "is empty; expected blocks such as 'M(0.9) ⊕ M(0)'")
    blocks, parts = _split_blocks(text), []
    for block in blocks:
        if not block:
            raise NotationError("notation", f"empty block in {notation!r}: a ⊕ or + with no block beside it")
        match = _BLOCK.match(block)
        if not match:
            raise NotationError(
                "notation", f"cannot read block {block!r} in {notation!r}; expected M(λ), M2(λ), CM(α+βi), CM2(α+βi)"
            )
        kind, size, value = match[1], match[2], match[3]
        m = int(size) if size else 1
        if m < 1:
            raise NotationError("notation", f"block size must be ≥ 1 in {block!r} of {notation!r}")
        if kind == "M":
            parts.append(jordan(_parse_real(value, block, notation), m))
        else:
            parts.append(complex_jordan(_parse_complex(value, block, notation), m))
    result = direct_sum(*parts)
    if not np.all(np.isfinite(result.B)):
        raise NotationError("notation", f"{notation!r} has a non-finite entry")
    # lm_rllc's own test, block by block (B is block diagonal): valid matrices, so a warning, not an error
    radii = [spectral_radius(part.B) for part in parts]
    not_decaying = [f"{block} (ρ = {rho:.6g})" for block, rho in zip(blocks, radii) if not rho < 1]
    if not_decaying:
        warnings.warn(
            f"{notation!r}: spectral radius ≥ 1 in {', '.join(not_decaying)}; lm_rllc and linear_memory "
            "need ρ(B) < 1 and will reject it (spec/propagators.md#notation)",
            SpectralRadiusWarning,
            stacklevel=2,
        )
    return result
