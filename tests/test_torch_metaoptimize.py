"""The torch backend's MetaOptimize where the conformance suite does not reach (spec/backends.md#metaoptimize):
integer block ids over a parameter structure (the suite draws only 'scalar' and 'weightwise'), the row-sparse
trace form refusing states it cannot hold, and the in-place step of the drop-in optimizers against F and G."""

from __future__ import annotations

import numpy as np
import pytest

from stepspec import problems as P
from stepspec._core import Observation
from stepspec.backends.reference import BACKEND as REFERENCE
from stepspec.conformance.harness import perturbation_growth, run, structured_run
from stepspec.conformance.tolerance import deviation, series_scale, tolerance
from stepspec.errors import StateError

torch = pytest.importorskip("torch")
from stepspec.backends.torch import BACKEND as TORCH  # noqa: E402

MO = "metaoptimize"
SHAPES = [(2, 3), (), (0,), (4,), (1, 1)]  # n = 12, a 0-d and an empty tensor among them
BLOCKS = np.array([2, 0, 0, 1, 2, 2, 3, 1, 0, 3, 1, 2])  # every id used, blocks spanning tensors
PROBLEM = P.random_logistic(40, 12, l2=0.01, seed=4)
THETA0 = np.random.default_rng(8).standard_normal(12)
STEPS = 8

CONFIGURATIONS = {
    "adamw-adam-2x2-free": dict(base="adamw", meta="adam", approximation="2x2", hessian="free"),
    "sgdm-sgd-full-free": dict(base="sgdm", meta="sgd", approximation="full", hessian="free", gamma=0.9),
    "rmsprop-rmsprop-L-diagonal-clip": dict(
        base="rmsprop", meta="rmsprop", approximation="L", hessian="diagonal", clip_decay=True, order="meta_first"
    ),
    "lion-lion-2x2-exact": dict(base="lion", meta="lion", approximation="2x2", hessian="exact", kappa=0.1),
    "sgd-sgd-full-exact-identity": dict(
        base="sgd", meta="sgd", approximation="full", hessian="exact", sigma="identity", meta_kappa=0.5
    ),
}


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")  # the growth's assume()
@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_block_ids_over_a_structure_are_the_concatenation(name):
    """Block ids given over the concatenation, split by the tensors' sizes: the structured run is the
    reference's run over the flat vector, state for state, within the policy (κ = the measured growth)."""
    hp = dict(CONFIGURATIONS[name], alpha0=0.05, eta=0.02, blocks=BLOCKS)
    reference = run(REFERENCE, MO, REFERENCE.algorithms[MO](**hp), PROBLEM, THETA0, STEPS)
    reference.source = (MO, hp, PROBLEM, None)
    mine = structured_run(TORCH, MO, TORCH.algorithms[MO](**hp), PROBLEM, THETA0, STEPS, SHAPES)
    tol = tolerance("float64", STEPS, perturbation_growth(reference, "float64"))
    assert max(np.max(np.abs(s["beta"] - reference.states[0]["beta"])) for s in reference.states) > 1e-3
    for field in ("theta", *reference.states[0]):
        expected = reference.thetas if field == "theta" else [s[field] for s in reference.states]
        actual = mine.thetas if field == "theta" else [s[field] for s in mine.states]
        scale = series_scale(expected)
        worst = max(deviation(a, e, scale)[0] for a, e in zip(actual, expected))
        assert worst <= tol, f"{name}: {field} deviates by {worst:.3g} > {tol:.3g}"


def _row_sparse_state():
    optimizer = TORCH.algorithms[MO]("sgd", "sgd", 0.05, blocks=BLOCKS, approximation="full")
    return optimizer, optimizer.init([torch.zeros(s, dtype=torch.float64) for s in SHAPES])


@pytest.mark.parametrize("field", ["X", "Y", "Q"])
def test_row_sparse_traces_refuse_a_state_off_their_pattern(field):
    """hessian='free': an override with an entry outside the reachable pattern (X, Q: column b(j) of weight j's
    rows; Y: diagonal blocks) is a StateError naming the field; one on the pattern round-trips exactly."""
    optimizer, s = _row_sparse_state()
    flat = getattr(s, field).clone()
    flat[{"X": (0, 2), "Y": (1, 1), "Q": (2 * 12 + 0, 2)}[field]] = 0.25  # b(0) = 2: H_{0,2}, Q[(2, 0), 2]
    rebuilt = optimizer.init([torch.zeros(sh, dtype=torch.float64) for sh in SHAPES], **{field: flat})
    assert torch.equal(getattr(rebuilt, field), flat)
    flat[{"X": (1, 2), "Y": (0, 1), "Q": (1, 1)}[field]] = 0.5  # b(1) = 0: H_{1,2}, Q[(0, 1), 1]
    with pytest.raises(StateError) as raised:
        optimizer.init([torch.zeros(sh, dtype=torch.float64) for sh in SHAPES], **{field: flat})
    assert raised.value.param == field


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_in_place_step_is_F_then_G(name):
    """step_ (the drop-in optimizers' path: F on the live state, θ += G) gives F and G's state and θ bit for bit."""
    hp = dict(CONFIGURATIONS[name], alpha0=0.05, eta=0.02, blocks=BLOCKS)
    optimizer = TORCH.algorithms[MO](**hp)
    sizes = [int(np.prod(s, dtype=int)) for s in SHAPES]

    def split(x):
        return [torch.tensor(part.reshape(s)) for part, s in zip(np.split(x, np.cumsum(sizes)[:-1]), SHAPES)]

    def join(parts):
        return np.concatenate([p.reshape(-1).numpy() for p in parts])

    params, theta = split(THETA0), split(THETA0)
    live, functional = optimizer.init(split(THETA0)), optimizer.init(split(THETA0))
    for _ in range(STEPS):
        x = join(params)
        obs = Observation(
            grad=split(PROBLEM.grad(x)),
            params=split(x),
            hvp=lambda v, x=x: split(PROBLEM.hvp(x, join(v))),
            third=lambda u, v, x=x: split(PROBLEM.third(x, join(u), join(v))),
        )
        optimizer.step_(live, obs, params)
        functional = optimizer.F(functional, obs)
        theta = [p + d for p, d in zip(theta, optimizer.G(functional, obs))]
    assert np.array_equal(join(params), join(theta))
    for field, value in functional.fields().items():
        assert np.array_equal(np.asarray(getattr(live, field)), np.asarray(value)), field
