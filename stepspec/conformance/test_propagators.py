"""The propagator builders and the paper's notation (spec/propagators.md). These are host-side
utilities every backend shares, so they are checked once, not per backend."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ..errors import HyperparameterError, NotationError, SpectralRadiusWarning
from ..reference import propagators as props
from ..reference.rllc import lm_rllc, spectral_radius
from .assertions import Context, assert_holds

pytestmark = pytest.mark.algo("propagators")
CTX = Context("propagators", "builders")


@given(lam=st.floats(-1.0, 1.0), m=st.integers(1, 5))
def test_jordan_block(lam, m):
    """M_m(λ) = (J_m(λ), e_1): λ on the diagonal, 1 just above it, 0 elsewhere (Sec. 5)."""
    B, a = props.jordan(lam, m)
    expected = np.diag(np.full(m, lam)) + np.diag(np.ones(m - 1), k=1)
    assert_holds(np.array_equal(B, expected), f"J_{m}({lam}) = {B.tolist()}", CTX)
    assert_holds(np.array_equal(a, np.eye(m)[0]), f"a = {a.tolist()} is not e_1", CTX)


@given(alpha=st.floats(-1.0, 1.0), beta=st.floats(-1.0, 1.0), m=st.integers(1, 3))
def test_complex_jordan_block(alpha, beta, m):
    """CM_m(α+βi): 2×2 blocks [[α, −β], [β, α]] (eq. 3) on the diagonal, I_2 just above (Sec. 5)."""
    B, a = props.complex_jordan(complex(alpha, beta), m)
    block = np.array([[alpha, -beta], [beta, alpha]])
    for i in range(m):
        assert_holds(np.array_equal(B[2 * i : 2 * i + 2, 2 * i : 2 * i + 2], block), f"diagonal block {i}", CTX)
        if i + 1 < m:
            assert_holds(np.array_equal(B[2 * i : 2 * i + 2, 2 * i + 2 : 2 * i + 4], np.eye(2)), f"identity {i}", CTX)
    off = B.copy()
    for i in range(m):
        off[2 * i : 2 * i + 2, 2 * i : 2 * i + 4] = 0.0
    assert_holds(not off.any(), "entries outside the block diagonal and superdiagonal", CTX)
    assert_holds(np.array_equal(a, np.eye(2 * m)[0]), "a is not e_1", CTX)


def test_cj2_matches_the_paper():
    """The paper's printed example CJ_2(α + βi)."""
    alpha, beta = 0.3, 0.2
    printed = np.array([[alpha, -beta, 1, 0], [beta, alpha, 0, 1], [0, 0, alpha, -beta], [0, 0, beta, alpha]])
    assert_holds(np.array_equal(props.complex_jordan(complex(alpha, beta), 2).B, printed), "CJ_2 differs", CTX)


_BLOCKS = st.one_of(
    st.tuples(st.just("M"), st.integers(1, 3), st.floats(-0.99, 0.99).map(lambda x: round(x, 3))),
    st.tuples(
        st.just("CM"),
        st.integers(1, 2),
        st.tuples(st.floats(-0.7, 0.7), st.floats(-0.7, 0.7)).map(lambda z: complex(round(z[0], 3), round(z[1], 3))),
    ),
)


def _write(kind, m, value, style):
    index = {0: "" if m == 1 else str(m), 1: f"_{m}", 2: f"_{{{m}}}"}[style]
    if kind == "M":
        number = f"{value}".replace("-", "−") if style == 1 else f"{value}"
    else:
        sign = "+" if value.imag >= 0 else "-"
        number = f"{value.real}{sign}{abs(value.imag)}i" if value.real else f"{value.imag}i"
    return f"{kind}{index}({number})"


@given(
    blocks=st.lists(_BLOCKS, min_size=1, max_size=4),
    style=st.integers(0, 2),
    joiner=st.sampled_from([" ⊕ ", "⊕", " + ", "+"]),
)
def test_notation_round_trip(blocks, style, joiner):
    """propagator(notation) is the direct sum of the builders, for every spelling the spec accepts."""
    notation = joiner.join(_write(kind, m, value, style) for kind, m, value in blocks)
    built = props.direct_sum(
        *[props.jordan(v, m) if kind == "M" else props.complex_jordan(v, m) for kind, m, v in blocks]
    )
    parsed = props.propagator(notation)
    ctx = Context("propagators", "notation_round_trip", {"notation": notation})
    assert_holds(
        np.array_equal(parsed.B, built.B) and np.array_equal(parsed.a, built.a),
        f"{notation!r} parsed to B = {parsed.B.tolist()}",
        ctx,
    )


@pytest.mark.parametrize("notation, k", list(zip(props.TABLE_1, (1, 2, 3, 2, 3, 4, 3, 4))))
def test_table_1(notation, k):
    """Every propagator of Table 1 builds from its notation, with k units and ρ(B) < 1."""
    B, a = props.propagator(notation)
    assert_holds(B.shape == (k, k) and a.shape == (k,), f"{notation}: k = {B.shape[0]}, expected {k}", CTX)
    assert_holds(spectral_radius(B) < 1, f"{notation}: ρ(B) = {spectral_radius(B)}", CTX)


def test_memory_7_example():
    """Sec. 5: M(0.9) ⊕ M2(0.6) ⊕ CM2(0.3 + 0.2i) is a memory-7 optimizer."""
    B, a = props.propagator("M(0.9) ⊕ M2(0.6) ⊕ CM2(0.3 + 0.2i)")
    assert_holds(B.shape == (7, 7) and a.tolist() == [1, 1, 0, 1, 0, 0, 0], f"k = {B.shape[0]}, a = {a}", CTX)
    assert_holds(math.isclose(B[3, 4], -0.2) and math.isclose(B[4, 3], 0.2), "CM block orientation", CTX)


MALFORMED = [
    "",
    "M(0.9) ⊕",
    "⊕ M(0.9)",
    "M(0.9) ⊕⊕ M(0)",
    "M0.9",
    "M(0.9",
    "M(0.9))",
    "X(0.5)",
    "M(abc)",
    "M(nan)",
    "M(inf)",
    "M(1e999)",
    "M(0.3+0.2i)",
    "CM(0.3+0.2k)",
    "M0(0.5)",
    "CM(1_0)",
    "M(0.9) M(0)",
    42,
]


@pytest.mark.parametrize("notation", MALFORMED, ids=[repr(m) for m in MALFORMED])
def test_malformed_notation(notation):
    """Malformed notation raises NotationError naming ``notation``."""
    ctx = Context("propagators", "malformed_notation", {"notation": notation})
    try:
        props.propagator(notation)
        raised = None
    except NotationError as exc:
        raised = exc
    assert_holds(
        raised is not None and raised.param == "notation" and "notation" in str(raised),
        f"{notation!r} was accepted or raised the wrong error",
        ctx,
    )


OUT_OF_DOMAIN = {  # notation: the block with ρ ≥ 1, as the warning names it (whitespace removed, − read as -)
    "M(1.5)": "M(1.5)",
    "M(-1)": "M(-1)",
    "M(−1)": "M(-1)",
    "CM(0.9+0.9i)": "CM(0.9+0.9i)",
    "M(0.9) ⊕ M2(1) ⊕ CM(0.3+0.2i)": "M2(1)",
}


@pytest.mark.parametrize("notation", list(OUT_OF_DOMAIN) + list(props.TABLE_1))
def test_out_of_domain_notation_warns(notation):
    """A block with spectral radius ≥ 1 parses (a valid matrix) with a SpectralRadiusWarning naming it,
    exactly when lm_rllc rejects the propagator (HyperparameterError naming B); Table 1 parses silently."""
    ctx = Context("propagators", "out_of_domain_notation_warns", {"notation": notation})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        B, a = props.propagator(notation)
    messages = [str(w.message) for w in caught if issubclass(w.category, SpectralRadiusWarning)]
    try:
        lm_rllc(B, a)
        rejected = False
    except HyperparameterError as exc:
        rejected = exc.param == "B"
    if notation in OUT_OF_DOMAIN:
        block = OUT_OF_DOMAIN[notation]
        assert_holds(rejected, f"{notation!r} should lie outside lm_rllc's domain", ctx)
        assert_holds(
            len(messages) == 1 and f"{block} (ρ = " in messages[0],
            f"expected one SpectralRadiusWarning naming {block!r}, got {messages}",
            ctx,
        )
    else:
        assert_holds(not rejected and not messages, f"{notation!r} warned {messages} or was rejected", ctx)
