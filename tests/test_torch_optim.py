"""The drop-in optimizers of ``stepspec.torch`` (spec/backends.md#drop-in-optimizers) against the functional
torch backend they adapt: the same trajectory bit for bit, for every algorithm the backend registers and
every catalogue sample; state_dict round trips; param groups; parameters without gradients; bad input
and the closure contract."""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import stepspec.torch as st  # noqa: E402
from stepspec import Observation  # noqa: E402
from stepspec.backends.torch import ALGORITHMS, BACKEND, FLOAT32, _fused  # noqa: E402
from stepspec.backends.torch._core import Structure  # noqa: E402
from stepspec.conformance.catalog import CATALOG  # noqa: E402
from stepspec.conformance.tolerance import deviation, series_scale, tolerance  # noqa: E402
from stepspec.errors import HyperparameterError, ObservationError  # noqa: E402
from stepspec.torch._optimizer import assemble, curvature_products, is_per_parameter  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::stepspec.errors.StepSizeWarning"),
    # backward(create_graph=True) in the closures of curvature-based algorithms: the documented contract
    pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning"),
]

SHAPES = [(3, 2), (2,), (), (0,), (3,)]  # a matrix, a vector, a 0-d and an empty tensor: n = 12
STEPS = 6
CASES = [(algo, sample) for algo in ALGORITHMS for sample in CATALOG[algo].samples]
ELEMENTWISE = [algo for algo in ALGORITHMS if st.OPTIMIZERS[algo].elementwise]
GLOBAL = [algo for algo in ALGORITHMS if not st.OPTIMIZERS[algo].elementwise]
SECOND_GROUP = {  # a different value of one hyperparameter for an elementwise algorithm's second group
    "sgd": {"lr": 0.03},
    "momentum": {"lr": 0.03, "beta": 0.5},
    "nag": {"lr": 0.03, "beta": 0.5},
    "adam": {"lr": 0.003, "betas": (0.8, 0.99)},
    "adamw": {"lr": 0.003, "weight_decay": 0.1},
    "rmsprop": {"lr": 0.003, "alpha": 0.9},
    "lion": {"lr": 0.003},
    "linear_memory": {"L": np.array([0.05, 0.02])},
}


class Problem:
    """f(x) = ½xᵀAx + bᵀx + 0.1 Σ log cosh xᵢ over the concatenation x of tensors of ``shapes``: smooth,
    with non-zero third derivatives; ∇²f v and ∇³f[u, v] in closed form."""

    def __init__(self, shapes=SHAPES, seed=0, dtype=torch.float64):
        self.shapes, self.dtype = shapes, dtype
        self.n = sum(math.prod(s) for s in shapes)
        rng = np.random.default_rng(seed)
        q = rng.standard_normal((self.n, self.n))
        self.A = torch.tensor(q @ q.T / self.n + np.eye(self.n), dtype=dtype)
        self.b = torch.tensor(rng.standard_normal(self.n), dtype=dtype)
        self.x0 = rng.standard_normal(self.n)

    def parameters(self):
        sizes = [math.prod(s) for s in self.shapes]
        parts = torch.split(torch.tensor(self.x0, dtype=self.dtype), sizes)
        return [torch.nn.Parameter(p.reshape(s).clone()) for p, s in zip(parts, self.shapes)]

    def loss(self, params):
        x = torch.cat([p.reshape(-1) for p in params])
        return 0.5 * x @ self.A @ x + self.b @ x + 0.1 * torch.log(torch.cosh(x)).sum()

    def hvp(self, x, v):
        return self.A @ v + 0.1 * (1 - torch.tanh(x) ** 2) * v

    def third(self, x, u, v):
        t = torch.tanh(x)
        return 0.1 * (-2 * t * (1 - t * t)) * u * v


class Scaled:
    """``problem``'s loss times ``factor``."""

    def __init__(self, problem, factor):
        self.problem, self.factor = problem, factor

    def loss(self, params):
        return self.factor * self.problem.loss(params)


def hyperparameters(algo, sample, dtype=torch.float64):
    """A catalogue sample's hyperparameters, a memory rule built on the backend of ``dtype``."""
    backend = BACKEND if dtype == torch.float64 else FLOAT32
    return CATALOG[algo].materialize(dict(sample.hyperparameters), backend)


def closure_for(optimizer, problem, params, curvature):
    def closure():
        optimizer.zero_grad()
        loss = problem.loss(params)
        loss.backward(create_graph=curvature)
        return loss

    return closure


def needs_curvature(functional) -> bool:
    return bool(functional.needs & {"hvp", "third"})


def functional_observation(functional, problem, params):
    """The observation the drop-in optimizer builds, computed here by autograd on the functional run's own
    parameters: the same graph, so the same numbers."""
    curvature = needs_curvature(functional)
    with torch.enable_grad():
        loss = problem.loss(params)
        grads = torch.autograd.grad(loss, params, create_graph=curvature)

    def product(outputs, vectors, create_graph=False):  # an empty tensor's gradient has no graph
        pairs = [(o, w) for o, w in zip(outputs, vectors) if o.requires_grad]
        with torch.enable_grad():
            results = torch.autograd.grad(
                [o for o, _ in pairs],
                params,
                [w for _, w in pairs],
                retain_graph=True,
                create_graph=create_graph,
                allow_unused=True,
            )
        return [torch.zeros_like(p) if r is None else r for r, p in zip(results, params)]

    def hvp(v):
        return product(grads, v)

    def third(u, v):
        return product(product(grads, u, create_graph=True), v)

    needs = functional.needs
    return Observation(
        grad=[g.detach() for g in grads],
        params=params if "params" in needs else None,
        loss=loss.detach() if "loss" in needs else None,
        hvp=hvp if "hvp" in needs else None,
        third=third if "third" in needs else None,
    )


def identical(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def drop_in_fields(optimizer, functional, params):
    """The drop-in optimizer's state over ``params`` as the spec's flat fields."""
    states = [optimizer.state[p] for p in params]
    holder = optimizer.state[optimizer.param_groups[0]["params"][0]]
    structure = Structure(tuple(p.shape for p in params), False, params[0].dtype, params[0].device)
    return assemble(functional.layouts, structure, states, holder).fields()


def assert_same_fields(mine: dict, expected: dict, where: str):
    assert mine.keys() == expected.keys()
    for name in expected:
        assert identical(mine[name], expected[name]), f"{where}: state field {name} differs"


def assert_close_fields(mine: dict, expected: dict, steps: int, where: str):
    """As ``assert_same_fields``, tensors within the float64 policy's tolerance after ``steps`` steps:
    torch's fused kernels (``torch_fused``) round the state's update differently from F's multi-tensor ops."""
    assert mine.keys() == expected.keys()
    for name in expected:
        if isinstance(expected[name], torch.Tensor):
            got, want = (np.asarray(x.detach().double().reshape(-1)) for x in (mine[name], expected[name]))
            worst, _ = deviation(got, want, series_scale(want))
            assert worst <= tolerance("float64", steps=steps), f"{where}: state field {name} deviates by {worst:.3g}"
        else:
            assert mine[name] == expected[name], f"{where}: state field {name} differs"


def two_groups(params):
    return [{"params": params[:2]}, {"params": params[2:]}]


def run_drop_in(algo, hp, problem, steps, groups=None):
    params = problem.parameters()
    optimizer = st.OPTIMIZERS[algo](groups(params) if groups else params, **hp)
    curvature = needs_curvature(optimizer._functional(0))
    closure = closure_for(optimizer, problem, params, curvature)
    trajectory = [[p.detach().clone() for p in params]]
    for _ in range(steps):
        optimizer.step(closure)
        trajectory.append([p.detach().clone() for p in params])
    return optimizer, params, trajectory


def run_functional(functional, problem, params, steps, state=None):
    state = functional.init(params) if state is None else state
    trajectory = [[p.detach().clone() for p in params]]
    for _ in range(steps):
        functional.step_(state, functional_observation(functional, problem, params), params)
        trajectory.append([p.detach().clone() for p in params])
    return state, trajectory


# --------------------------------------------------------------------------- every algorithm registered


def test_every_registered_algorithm_has_a_drop_in_class_with_the_spec_signature():
    for algo, constructor in ALGORITHMS.items():
        cls = st.OPTIMIZERS[algo]
        theirs = [p for p in inspect.signature(constructor).parameters.values() if p.name not in ("dtype", "device")]
        mine = list(inspect.signature(cls).parameters.values())
        assert mine[0].name == "params" and mine[1:-1] == theirs, algo
        assert (mine[-1].name, mine[-1].kind, mine[-1].default) == ("compile", inspect.Parameter.KEYWORD_ONLY, "auto")


@pytest.mark.parametrize("algo, sample", CASES, ids=[f"{a}-{s.desc}" for a, s in CASES])
def test_drop_in_equals_the_functional_backend(algo, sample):
    """Step by step, over a matrix, a vector, a 0-d and an empty tensor, with gradients, loss and curvature
    products from autograd: θ_t and S_t bit for bit those of the functional optimizer's ``step_`` (its own
    run on its own tensors); and each step is F then G of the conformance-tested contract: S_t bit for bit
    (within the policy's tolerance where ``step_`` is torch's fused kernel), θ_t = θ_{t−1} + G(S_t, obs_t)
    within the policy's one-step tolerance (a fused update rounds differently)."""
    hp = hyperparameters(algo, sample)
    problem = Problem()
    params, theirs = problem.parameters(), problem.parameters()
    optimizer = st.OPTIMIZERS[algo](params, **hp)
    functional = ALGORITHMS[algo](**hp)
    closure = closure_for(optimizer, problem, params, needs_curvature(functional))
    theirs_state, state = functional.init(theirs), functional.init(params)
    for t in range(1, STEPS + 1):
        before = [torch.nn.Parameter(p.detach().clone()) for p in params]
        obs = functional_observation(functional, problem, before)
        state = functional.F(state, obs)
        expected = [b.detach() + d for b, d in zip(before, functional.G(state, obs))]
        optimizer.step(closure)
        functional.step_(theirs_state, functional_observation(functional, problem, theirs), theirs)
        mine = drop_in_fields(optimizer, functional, params)
        assert identical(params, theirs), f"{algo}: θ_{t} differs from the functional step_'s"
        assert_same_fields(mine, theirs_state.fields(), f"{algo}, S_{t} against step_")
        if getattr(functional, "torch_fused", False):
            assert_close_fields(mine, state.fields(), t, f"{algo}, S_{t} against F")
        else:
            assert_same_fields(mine, state.fields(), f"{algo}, S_{t} against F")
        got, want = (torch.cat([x.detach().reshape(-1) for x in xs]).numpy() for xs in (params, expected))
        worst, _ = deviation(got, want, series_scale(want))
        assert worst <= tolerance("float64"), f"{algo}: θ_{t} deviates by {worst:.3g} from θ_{t - 1} + G"


ROUND_TRIPS = [(algo, sample, torch.float64) for algo, sample in CASES] + [
    (algo, CATALOG[algo].samples[0], torch.float32) for algo in ALGORITHMS
]


@pytest.mark.parametrize(
    "algo, sample, dtype", ROUND_TRIPS, ids=[f"{a}-{s.desc}-{str(d)[6:]}" for a, s, d in ROUND_TRIPS]
)
def test_state_dict_round_trip_continues_bit_for_bit(algo, sample, dtype):
    """A state_dict saved mid-run (through torch.save where the hyperparameters pickle, else a deep copy)
    and loaded into a fresh optimizer over fresh parameters continues the trajectory bit for bit; loading
    the live state_dict in memory shares no tensor with the source optimizer. In float32 too, where some
    global fields keep float64 (a step size) and torch's cast would round them."""
    hp = hyperparameters(algo, sample, dtype)
    problem = Problem(seed=1, dtype=dtype)
    optimizer, params, _ = run_drop_in(algo, hp, problem, 3)
    saved_params = [p.detach().clone() for p in params]
    try:
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
    except (AttributeError, TypeError, ValueError, RuntimeError, pickle.PicklingError, pickle.UnpicklingError):
        assert algo == "rllc", f"{algo}: state_dict does not survive torch.save / torch.load(weights_only=True)"
        saved = copy.deepcopy(optimizer.state_dict())

    fresh, live = ([torch.nn.Parameter(p.clone()) for p in saved_params] for _ in range(2))
    resumed = st.OPTIMIZERS[algo](fresh, **hp)
    resumed.load_state_dict(saved)
    in_memory = st.OPTIMIZERS[algo](live, **hp)
    in_memory.load_state_dict(optimizer.state_dict())
    curvature = needs_curvature(optimizer._functional(0))
    runs = [(o, ps, closure_for(o, problem, ps, curvature)) for o, ps in ((optimizer, params), (resumed, fresh))]
    runs.append((in_memory, live, closure_for(in_memory, problem, live, curvature)))
    for t in range(3):
        for o, _, closure in runs:
            o.step(closure)
        for _, ps, _ in runs[1:]:
            assert identical(ps, params), f"{algo}: the resumed run differs at step {t + 1} after loading"
    functional = optimizer._functional(0)
    expected = drop_in_fields(optimizer, functional, params)
    for o, ps, _ in runs[1:]:
        assert_same_fields(drop_in_fields(o, functional, ps), expected, algo)


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_state_shares_no_memory_with_gradients_or_parameters(algo):
    """A step writes its results into the optimizer's own tensors: zero_grad(set_to_none=False) zeroes the
    gradients in place, and the next step moves the parameters in place."""
    optimizer, params, _ = run_drop_in(algo, hyperparameters(algo, CATALOG[algo].samples[0]), Problem(), 2)
    foreign = {t.untyped_storage().data_ptr() for p in params for t in (p, p.grad) if t is not None and t.numel()}

    def tensors(value):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, list):
            for v in value:
                yield from tensors(v)

    for entry in optimizer.state.values():
        for name, value in entry.items():
            for t in tensors(value):
                assert not t.numel() or t.untyped_storage().data_ptr() not in foreign, f"{algo}: {name} aliases"


# --------------------------------------------------------------------------- param groups


@pytest.mark.parametrize("algo", ELEMENTWISE)
def test_elementwise_groups_are_separate_optimizers(algo):
    """Each group of an elementwise algorithm runs with its own hyperparameters: the same as one functional
    optimizer per group."""
    hp = hyperparameters(algo, CATALOG[algo].samples[0])
    problem = Problem()

    def groups(params):
        return [{"params": params[:2]}, {"params": params[2:], **SECOND_GROUP[algo]}]

    optimizer, params, mine = run_drop_in(algo, hp, problem, STEPS, groups)
    theirs_params = problem.parameters()
    firsts, seconds = theirs_params[:2], theirs_params[2:]
    functionals = [ALGORITHMS[algo](**hp), ALGORITHMS[algo](**{**hp, **SECOND_GROUP[algo]})]
    states = [f.init(ps) for f, ps in zip(functionals, (firsts, seconds))]
    for t in range(STEPS):
        grads = functional_observation(functionals[0], problem, theirs_params).grad
        for f, s, ps, gs in zip(functionals, states, (firsts, seconds), (grads[:2], grads[2:])):
            f.step_(s, Observation(grad=gs, params=ps), ps)
        assert identical(mine[t + 1], theirs_params), f"{algo}: step {t + 1} differs"


@pytest.mark.parametrize("algo", GLOBAL)
def test_global_groups_form_one_structure(algo):
    """Two groups with the same hyperparameters run as one functional optimizer over all parameters."""
    hp = hyperparameters(algo, CATALOG[algo].samples[0])
    problem = Problem()

    _, _, mine = run_drop_in(algo, hp, problem, STEPS, two_groups)
    _, theirs = run_functional(ALGORITHMS[algo](**hp), problem, problem.parameters(), STEPS)
    assert identical(mine, theirs)


@pytest.mark.parametrize("algo", GLOBAL)
def test_global_groups_must_agree(algo):
    """Differing hyperparameters between groups of a global algorithm: HyperparameterError naming the
    hyperparameter, at construction, in add_param_group (the group is not added) and at a step (nothing
    moves)."""
    hp = hyperparameters(algo, CATALOG[algo].samples[0])
    params = Problem().parameters()
    optimizer = st.OPTIMIZERS[algo]([{"params": params[:2]}], **hp)
    group = optimizer.param_groups[0]
    name, value = next(
        (k, group[k]) for k in optimizer.hyperparameter_names if isinstance(group[k], float) and group[k]
    )
    other = {name: value / 2}
    with pytest.raises(HyperparameterError, match="differs between param groups") as error:
        st.OPTIMIZERS[algo]([{"params": params[:2]}, {"params": params[2:], **other}], **hp)
    assert error.value.param == name
    with pytest.raises(HyperparameterError, match="differs between param groups") as error:
        optimizer.add_param_group({"params": params[2:], **other})
    assert error.value.param == name and len(optimizer.param_groups) == 1
    optimizer.add_param_group({"params": params[2:]})
    optimizer.param_groups[1][name] = value / 2
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(HyperparameterError, match="differs between param groups") as error:
        optimizer.step(lambda: torch.tensor(1.0, dtype=torch.float64))
    assert error.value.param == name and identical([p.detach() for p in params], before) and not optimizer.state


def test_a_scheduler_changes_the_learning_rate_of_the_next_step():
    """An LR scheduler writes group['lr']; the next step runs with it (the functional optimizer is rebuilt)."""
    problem = Problem()
    params = problem.parameters()
    optimizer = st.Adam(params, lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    closure = closure_for(optimizer, problem, params, False)
    theirs = problem.parameters()
    state = None
    for t in range(4):
        optimizer.step(closure)
        scheduler.step()
        functional = ALGORITHMS["adam"](lr=0.01 * 0.1 ** (t // 2))
        state = functional.init(theirs) if state is None else state
        functional.step_(state, functional_observation(functional, problem, theirs), theirs)
        assert identical(params, theirs), f"step {t + 1}"


def test_hyperparameters_are_validated_per_group():
    params = Problem().parameters()
    with pytest.raises(HyperparameterError) as error:
        st.Adam([{"params": params[:2]}, {"params": params[2:], "betas": (0.9, 1.5)}])
    assert error.value.param == "betas"
    with pytest.raises(HyperparameterError) as error:
        st.SGD(params, lr=-1.0)
    assert error.value.param == "lr"
    with pytest.raises(TypeError, match="lr"):
        st.SGD(params)  # the spec's lr has no default


# --------------------------------------------------------------------------- parameters without gradients


def test_an_elementwise_parameter_without_gradient_keeps_its_state_and_its_counter():
    """Adam with a parameter skipped at step 2: it runs as its own optimizer that took two steps."""
    problem = Problem(shapes=[(3,), (2,)])
    params = problem.parameters()
    optimizer = st.Adam(params, lr=0.01)
    alone = [torch.nn.Parameter(p.detach().clone()) for p in params]
    functionals = [ALGORITHMS["adam"](lr=0.01) for _ in alone]
    states = [f.init([p]) for f, p in zip(functionals, alone)]
    for t in range(4):
        optimizer.zero_grad()
        problem.loss(params).backward()
        grads = [p.grad.clone() for p in params]
        if t == 1:
            params[1].grad = None
        optimizer.step()
        for i, (f, s, p) in enumerate(zip(functionals, states, alone)):
            if not (t == 1 and i == 1):
                f.step_(s, Observation(grad=[grads[i]]), [p])
        assert identical(params, alone), f"step {t + 1}"
    assert [optimizer.state[p]["step"] for p in params] == [4, 3]


@pytest.mark.parametrize("algo", GLOBAL)
def test_a_global_parameter_without_gradient(algo):
    """Where the state is resizable, a parameter without gradient is skipped: it and its state stay, the
    others move, and the next step includes it again. Where it is not (a state sized by all parameters
    jointly), the step is an ObservationError naming grad and params[4], and nothing changes."""
    hp = hyperparameters(algo, CATALOG[algo].samples[0])
    problem = Problem()
    optimizer, params, _ = run_drop_in(algo, hp, problem, 2)
    curvature = needs_curvature(optimizer._functional(0))
    before, state = _snapshot(optimizer, params)

    def closure():
        optimizer.zero_grad()
        loss = problem.loss(params)
        loss.backward(create_graph=curvature)
        params[4].grad = None
        return loss

    if not optimizer.resizable:
        with pytest.raises(ObservationError, match=r"params\[4\]") as error:
            optimizer.step(closure)
        assert error.value.param == "grad"
        assert identical([p.detach() for p in params], before)
        assert identical(optimizer.state_dict()["state"], state)
        return
    optimizer.step(closure)
    assert identical(params[4].detach(), before[4])
    assert identical(optimizer.state_dict()["state"][4], state[4]), f"{algo}: the skipped parameter's state"
    assert not identical([p.detach() for p in params[:2]], before[:2])
    optimizer.step(closure_for(optimizer, problem, params, curvature))
    assert not identical(params[4].detach(), before[4])


RESIZABLE = [
    algo
    for algo in GLOBAL
    if st.OPTIMIZERS[algo](Problem().parameters(), **hyperparameters(algo, CATALOG[algo].samples[0])).resizable
]


@pytest.mark.parametrize("algo", RESIZABLE)
def test_a_parameter_with_its_first_gradient_later_starts_from_S0(algo):
    """A parameter without gradient at the first step joins the structure at the second with the spec's S_0
    for its per-parameter fields: the second step is the functional step over all five tensors from the
    first step's state extended by S_0 of the newcomer."""
    hp = hyperparameters(algo, CATALOG[algo].samples[0])
    problem = Problem()
    params = problem.parameters()
    optimizer = st.OPTIMIZERS[algo](params, **hp)
    functional = ALGORITHMS[algo](**hp)
    curvature = needs_curvature(functional)

    def closure_without_the_last():
        optimizer.zero_grad()
        loss = problem.loss(params)
        loss.backward(create_graph=curvature)
        params[4].grad = None
        return loss

    optimizer.step(closure_without_the_last)
    assert params[4] not in optimizer.state
    first = drop_in_fields(optimizer, functional, params[:4])
    newcomer = functional.init([params[4].detach().clone()]).fields()
    fields = {
        name: torch.cat([first[name], newcomer[name]]) if is_per_parameter(layout) else first[name]
        for name, layout in functional.layouts.items()
    }
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in params]
    state = functional.init(theirs, **fields)
    optimizer.step(closure_for(optimizer, problem, params, curvature))
    functional.step_(state, functional_observation(functional, problem, theirs), theirs)
    assert identical(params, theirs)
    assert_same_fields(drop_in_fields(optimizer, functional, params), state.fields(), algo)


def _snapshot(optimizer, params):
    return [p.detach().clone() for p in params], copy.deepcopy(optimizer.state_dict()["state"])


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("started", [False, True], ids=["first step", "mid-run"])
@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_a_nan_gradient_in_the_third_of_five_tensors_changes_nothing(algo, started):
    """ObservationError naming grad; all five tensors (in two param groups) and all state as they were."""
    hp = hyperparameters(algo, CATALOG[algo].samples[0])
    problem = Problem()
    optimizer, params, _ = run_drop_in(algo, hp, problem, 2 if started else 0, two_groups)
    before, state = _snapshot(optimizer, params)
    curvature = needs_curvature(optimizer._functional(0))

    def closure():
        optimizer.zero_grad()
        loss = problem.loss(params)
        loss.backward(create_graph=curvature)
        with torch.no_grad():
            params[2].grad.fill_(float("nan"))
        return loss

    with pytest.raises(ObservationError) as error:
        optimizer.step(closure)
    assert error.value.param == "grad"
    assert identical([p.detach() for p in params], before), f"{algo}: a parameter moved"
    assert identical(optimizer.state_dict()["state"], state), f"{algo}: the state changed"


def test_sparse_gradient_is_rejected_naming_the_parameter():
    params = Problem().parameters()
    optimizer = st.Adam(params, lr=0.01)
    for p in params:
        p.grad = torch.ones_like(p)
    params[4].grad = torch.ones(3, dtype=torch.float64).to_sparse()
    before = [p.detach().clone() for p in params]
    with pytest.raises(ObservationError, match=r"params\[4\].*sparse") as error:
        optimizer.step()
    assert error.value.param == "grad" and identical(params, before) and not optimizer.state


@pytest.mark.parametrize(
    "make, index",
    [
        (lambda: [torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float32)], 1),
        (lambda: [torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64, device="meta")], 1),
        (lambda: [torch.zeros(2, dtype=torch.float16)], 0),
        (lambda: [torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.complex128)], 1),
        (lambda: [torch.zeros(3, dtype=torch.float64).to_sparse()], 0),
    ],
    ids=["mixed dtypes", "mixed devices", "float16", "complex", "sparse"],
)
def test_parameters_outside_one_real_dense_precision_are_rejected(make, index):
    with pytest.raises(HyperparameterError, match=rf"params\[{index}\]") as error:
        st.Adam([torch.nn.Parameter(t) for t in make()])
    assert error.value.param == "params"


def test_a_mixed_group_is_not_added():
    optimizer = st.Adam([torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))])
    with pytest.raises(HyperparameterError, match=r"params\[1\]"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.float32))]})
    assert len(optimizer.param_groups) == 1


# --------------------------------------------------------------------------- the closure contract


@pytest.mark.parametrize("algo", ["elra", "elra_lean"])
def test_elra_needs_a_closure_returning_the_loss(algo):
    params = Problem().parameters()
    optimizer = st.OPTIMIZERS[algo](params)
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(ObservationError, match="closure") as error:
        optimizer.step()
    assert error.value.param == "loss"
    with pytest.raises(ObservationError, match="returned None") as error:
        optimizer.step(lambda: None)
    assert error.value.param == "loss" and not optimizer.state


def test_curvature_needs_a_closure_with_create_graph():
    """MetaOptimize with the exact Hessian: no closure, or a closure without create_graph=True, is an
    ObservationError naming hvp; nothing moves."""
    problem = Problem()
    params = problem.parameters()
    optimizer = st.MetaOptimize(params, "sgd", "sgd", 0.05, hessian="exact")
    before = [p.detach().clone() for p in params]
    with pytest.raises(ObservationError, match="closure") as error:
        optimizer.step()
    assert error.value.param == "hvp"
    with pytest.raises(ObservationError, match="create_graph=True") as error:
        optimizer.step(closure_for(optimizer, problem, params, curvature=False))
    assert error.value.param == "hvp" and identical(params, before) and not optimizer.state


def test_curvature_products_by_double_backward_are_the_hessians():
    """hvp and third from the closure's graph equal the closed forms ∇²f v and ∇³f[u, v], within the
    policy's one-evaluation tolerance (conditioning: ‖A‖ over the result's scale, here < 10)."""
    problem = Problem()
    params = problem.parameters()
    problem.loss(params).backward(create_graph=True)
    hvp, third = curvature_products(params)
    x = torch.cat([p.detach().reshape(-1) for p in params])
    rng = np.random.default_rng(2)
    u, v = (torch.tensor(rng.standard_normal(problem.n), dtype=torch.float64) for _ in range(2))
    structure = Structure(tuple(p.shape for p in params), False, torch.float64, torch.device("cpu"))
    got_hvp = structure.join(hvp(structure.split(v)))
    got_third = structure.join(third(structure.split(u), structure.split(v)))
    for got, expected in ((got_hvp, problem.hvp(x, v)), (got_third, problem.third(x, u, v))):
        worst, _ = deviation(got.numpy(), expected.numpy(), series_scale(expected.numpy()))
        assert worst <= tolerance("float64", 0, 10.0)


# --------------------------------------------------------------------------- ELRA's batch controller


@pytest.mark.parametrize("algo", ["elra", "elra_lean"])
def test_batch_multiple_follows_the_controller(algo):
    """``batch_multiple`` is m_0 before the first step, then the functional state's ``multiple`` after every
    step; on this run the controller changes it."""
    hp = hyperparameters(algo, next(s for s in CATALOG[algo].samples if s.desc == "every mechanism on"))
    problem = Problem()
    params = problem.parameters()
    optimizer = st.OPTIMIZERS[algo](params, **hp)
    assert optimizer.batch_multiple == hp["initial_multiple"]
    functional = ALGORITHMS[algo](**hp)
    theirs = problem.parameters()
    state = functional.init(theirs)
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(24):
        scaled = Scaled(problem, float(rng.uniform(0.5, 1.5)))  # a noisy loss, so the period statistics vary
        optimizer.step(closure_for(optimizer, scaled, params, False))
        functional.step_(state, functional_observation(functional, scaled, theirs), theirs)
        assert optimizer.batch_multiple == state.multiple
        seen.add(optimizer.batch_multiple)
    assert len(seen) > 1, f"{algo}: the controller never changed the multiple on this run: {seen}"


# --------------------------------------------------------------------------- the README's example


def test_readme_pytorch_example_runs_and_its_claim_holds():
    """The training example of README's "PyTorch" section: at most 15 lines, and the loss it prints is the
    one its comment gives (0.011, within float32 summation-order differences)."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## PyTorch\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    assert len(code.strip().splitlines()) <= 15
    out, threads = io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)  # a 4-32-1 network: intra-op threads only contend with the other test worker
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        torch.set_num_threads(threads)
    assert 0.010 <= float(out.getvalue()) <= 0.012


def test_compile_true_runs_the_fast_path_as_the_eager_step_does(monkeypatch):
    """``compile=True`` takes the compiled pass (the kernel test_torch_fused.py compiles, so its code is
    cached); its trajectory is the eager one's to the float32 policy's tolerance, and a bad mode is refused."""
    torch.manual_seed(3)
    shapes = [(3, 4), (5,), ()]
    start = [torch.randn(shape) for shape in shapes]
    grads = [[torch.randn(shape) for shape in shapes] for _ in range(3)]
    passes, run_ = [], _fused.run_
    monkeypatch.setattr(_fused, "run_", lambda *args, **kwargs: (passes.append(kwargs), run_(*args, **kwargs))[1])
    runs = {}
    for mode in (True, False):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = st.AdamW(params, lr=0.05, compile=mode)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            optimizer.step()
        runs[mode] = torch.cat([p.detach().reshape(-1) for p in params]).double().numpy()
    assert passes == [{"compile": True}] * len(grads)  # the compiled pass ran for True only
    bound = tolerance("float32", steps=len(grads))
    assert np.max(np.abs(runs[True] - runs[False])) <= bound * series_scale([runs[False]])
    with pytest.raises(HyperparameterError, match="compile"):
        st.AdamW(params, compile="yes")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_finite_check_decides_by_sums_and_settles_overflow_exactly(dtype):
    """``_core.all_finite``: a NaN or infinity anywhere (two opposite infinities included) is caught; finite
    entries whose sum overflows pass through the exact check."""
    from stepspec.backends.torch._core import all_finite

    huge = torch.finfo(dtype).max
    assert all_finite(
        [torch.full((4, 3), huge, dtype=dtype), torch.zeros(0, dtype=dtype), torch.tensor(1.0, dtype=dtype)]
    )
    for bad in ([math.nan], [math.inf], [-math.inf], [math.inf, -math.inf]):
        tensors = [torch.ones(5, dtype=dtype), torch.tensor([0.0, *bad], dtype=dtype)]
        assert not all_finite(tensors), bad


def test_a_class_for_an_algorithm_the_backend_lacks_is_refused_at_definition():
    with pytest.raises(TypeError, match="'no_such_algorithm' is not one the torch backend registers"):

        class Unknown(st.StepspecOptimizer):
            algorithm = "no_such_algorithm"
