"""The catalogue: one row per algorithm (spec/conformance.md#catalogue).

A row holds what the spec pages cannot: sampling boxes for the hypothesis strategies, named sample
configurations (the paper's Table 1 among them), strategies for hyperparameters whose domain is
prose (matrices, memory rules), hand-written error inputs and the conditioning of one step, which
the tolerance policy needs. Domains, defaults and state fields come from the spec page itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

from .. import spec
from ..errors import HyperparameterError, StateError
from ..reference import propagators as props
from . import strategies
from .error_inputs import ErrorInput, Phase


@dataclass(frozen=True)
class MemoryRuleSpec:
    """U(M, H, g) = (M B + g aᵀ)/(1 + decay·H) + curvature·S(M) C, H' = H + 1, S(M) = M∘M/(1 + M∘M).

    A non-linear memory rule with a hidden state (a step counter), for Lemma 3.8 and the generic
    ``rllc``; S is bounded, so the memory stays bounded when ρ(B) < 1. Written with + * / @ and
    indexing only, so ``build`` runs on any backend's arrays; decay = curvature = 0 is the linear
    rule (R4).
    """

    B: np.ndarray
    a: np.ndarray
    C: np.ndarray
    decay: float = 0.0
    curvature: float = 0.0

    @property
    def k(self) -> int:
        return self.B.shape[0]

    def build(self, backend) -> Callable:
        B, C = backend.asarray(self.B), backend.asarray(self.C)
        a_row = backend.asarray(self.a.reshape(1, -1))
        decay, curvature = self.decay, self.curvature

        def rule(M, H, g):
            linear = M @ B + g[:, None] * a_row
            squashed = (M * M) / (1.0 + M * M)
            return linear * (1.0 / (1.0 + decay * H)) + curvature * (squashed @ C), H + 1.0

        return rule


def memory_conditioning(state: Mapping) -> float:
    """κ(M)² over the non-zero singular values: the sensitivity of the law step M⁺g (least squares)."""
    sigma = np.linalg.svd(state["M"], compute_uv=False)
    kept = sigma[sigma > max(state["M"].shape) * np.finfo(np.float64).eps * sigma.max(initial=0.0)]
    return float((kept.max() / kept.min()) ** 2) if kept.size else 1.0


@dataclass(frozen=True)
class Sample:
    desc: str
    hyperparameters: Mapping


@dataclass(frozen=True)
class AlgorithmInfo:
    algo: str
    ranges: Mapping[str, tuple]  # sampling box per interval hyperparameter (one box per factor for products)
    samples: tuple[Sample, ...]
    described: Callable | None = None  # () -> strategy of the prose-domain hyperparameters, jointly
    extra_error_inputs: tuple[ErrorInput, ...] = ()
    step_conditioning: Callable[[Mapping], float] = field(default=lambda state: 1.0)

    @property
    def spec(self) -> spec.Section:
        return spec.section(self.algo)

    @property
    def family(self) -> str:
        return self.spec.page.removesuffix(".md")

    def with_defaults(self, hyperparameters: Mapping) -> dict:
        """``hyperparameters`` completed with the spec's literal defaults."""
        defaults = {
            h.name: h.default for h in self.spec.hyperparameters if h.default not in (spec.REQUIRED, spec.COMPUTED)
        }
        return {**defaults, **hyperparameters}

    def materialize(self, hyperparameters: Mapping, backend) -> dict:
        """Host hyperparameters as the backend's constructor takes them: a ``MemoryRuleSpec`` becomes
        a rule on the backend's arrays; everything else is passed as is."""
        return {k: (v.build(backend) if isinstance(v, MemoryRuleSpec) else v) for k, v in hyperparameters.items()}


# --------------------------------------------------------------------------- prose-domain strategies


@st.composite
def _lm_rllc_described(draw):
    p = draw(strategies.propagators())
    values = {"B": p.B, "a": p.a}
    if draw(st.booleans()):
        values["L0"] = draw(strategies.vectors(p.B.shape[0], scale=0.3))
    return values


@st.composite
def _linear_memory_described(draw):
    p = draw(strategies.propagators())
    return {"B": p.B, "a": p.a, "L": draw(strategies.vectors(p.B.shape[0], scale=0.1))}


@st.composite
def _rllc_described(draw):
    p = draw(strategies.propagators(max_k=3))
    k = p.B.shape[0]
    rule = MemoryRuleSpec(
        p.B,
        p.a,
        draw(strategies.vectors(k * k, scale=0.1)).reshape(k, k),
        decay=draw(strategies.floats(0.0, 0.2)),
        curvature=draw(strategies.floats(0.0, 0.2)),
    )
    return {"rule": rule, "L0": draw(strategies.vectors(k, scale=0.3)), "H0": 0.0}


# --------------------------------------------------------------------------- rows

_ADAPTIVE_RANGES = {"lr": (1e-4, 0.1), "eps": (1e-10, 1e-4), "weight_decay": (0.0, 0.1)}
_NAG_LAW = props.propagator("M(0.9) ⊕ M(0)")
_EXAMPLE_RULE = MemoryRuleSpec(_NAG_LAW.B, _NAG_LAW.a, 0.05 * np.ones((2, 2)), decay=0.1, curvature=0.1)


def _propagator_error_inputs(law_name: str, law: np.ndarray) -> tuple[ErrorInput, ...]:
    """B and a of eq. (1), and a law of the wrong length; the base sample uses M(0.9) ⊕ M(0)."""
    construct = Phase.CONSTRUCT
    return (
        ErrorInput(
            "B with spectral radius 1", construct, HyperparameterError, "B", hyperparameters={"B": np.diag([1.0, 0.5])}
        ),
        ErrorInput(
            "B with spectral radius 1.8, every entry < 1",
            construct,
            HyperparameterError,
            "B",
            hyperparameters={"B": np.array([[0.9, 0.9], [0.9, 0.9]])},
        ),
        ErrorInput("B not square", construct, HyperparameterError, "B", hyperparameters={"B": np.zeros((2, 3))}),
        ErrorInput(
            "B with NaN",
            construct,
            HyperparameterError,
            "B",
            hyperparameters={"B": np.array([[np.nan, 0.0], [0.0, 0.0]])},
        ),
        ErrorInput("a of the wrong length", construct, HyperparameterError, "a", hyperparameters={"a": np.ones(3)}),
        ErrorInput("a with Inf", construct, HyperparameterError, "a", hyperparameters={"a": np.array([1.0, np.inf])}),
        ErrorInput(
            f"{law_name} of the wrong length",
            construct,
            HyperparameterError,
            law_name,
            hyperparameters={law_name: np.append(law, 0.0)},
        ),
        ErrorInput(
            f"{law_name} with NaN",
            construct,
            HyperparameterError,
            law_name,
            hyperparameters={law_name: np.array([np.nan, 0.0])},
        ),
    )


def _wrong_shape_rule(M, H, g):
    return M[:, :1], H


def _non_finite_rule(M, H, g):
    return M * float("nan"), H


_RLLC_ERROR_INPUTS = (
    ErrorInput("rule not callable", Phase.CONSTRUCT, HyperparameterError, "rule", hyperparameters={"rule": 3.0}),
    ErrorInput("L0 empty", Phase.CONSTRUCT, HyperparameterError, "L0", hyperparameters={"L0": np.zeros(0)}),
    ErrorInput("L0 a matrix", Phase.CONSTRUCT, HyperparameterError, "L0", hyperparameters={"L0": np.zeros((2, 2))}),
    ErrorInput(
        "rule returns M of the wrong shape",
        Phase.STEP,
        HyperparameterError,
        "rule",
        hyperparameters={"rule": _wrong_shape_rule},
        observation=lambda obs: obs,
        check_G=False,
    ),
    ErrorInput(
        "rule returns a non-finite M",
        Phase.STEP,
        HyperparameterError,
        "rule",
        hyperparameters={"rule": _non_finite_rule},
        observation=lambda obs: obs,
        check_G=False,
    ),
)


@st.composite
def _metaoptimize_described(draw):
    return {"blocks": draw(st.sampled_from(["scalar", "weightwise"])), "clip_decay": draw(st.booleans())}


_MO = "metaoptimize"
_METAOPTIMIZE_ERROR_INPUTS = (
    ErrorInput(
        "blocks leave an id unused",
        Phase.CONSTRUCT,
        HyperparameterError,
        "blocks",
        hyperparameters={"blocks": np.array([0, 2, 2])},
    ),
    ErrorInput(
        "blocks not integers",
        Phase.CONSTRUCT,
        HyperparameterError,
        "blocks",
        hyperparameters={"blocks": np.array([0.0, 0.5, 1.0])},
    ),
    ErrorInput(
        "blocks an unknown name",
        Phase.CONSTRUCT,
        HyperparameterError,
        "blocks",
        hyperparameters={"blocks": "layerwise"},
    ),
    ErrorInput(
        "blocks for the wrong number of weights",
        Phase.INIT,
        HyperparameterError,
        "blocks",
        hyperparameters={"blocks": np.array([0, 1])},
    ),
    ErrorInput(
        "clip_decay not a bool", Phase.CONSTRUCT, HyperparameterError, "clip_decay", hyperparameters={"clip_decay": 1}
    ),
    ErrorInput(
        "clip_decay without the diagonal Hessian",
        Phase.CONSTRUCT,
        HyperparameterError,
        "clip_decay",
        hyperparameters={"clip_decay": True, "hessian": "exact"},
    ),
    ErrorInput(
        "full with the diagonal Hessian",
        Phase.CONSTRUCT,
        HyperparameterError,
        "hessian",
        hyperparameters={"hessian": "diagonal"},
    ),
    ErrorInput(
        "meta_first with full", Phase.CONSTRUCT, HyperparameterError, "order", hyperparameters={"order": "meta_first"}
    ),
    ErrorInput(
        "authors_code with full",
        Phase.CONSTRUCT,
        HyperparameterError,
        "convention",
        hyperparameters={"convention": "authors_code"},
    ),
)


@st.composite
def _hypergradient_described(draw):
    return {"nesterov": draw(st.booleans(), label="nesterov")}


_HYPERGRADIENT_ERROR_INPUTS = (  # on the first sample, Adam-HD
    ErrorInput(
        "momentum with adam", Phase.CONSTRUCT, HyperparameterError, "momentum", hyperparameters={"momentum": 0.9}
    ),
    ErrorInput(
        "nesterov with adam",
        Phase.CONSTRUCT,
        HyperparameterError,
        "nesterov",
        hyperparameters={"momentum": 0.9, "nesterov": True},
    ),
    ErrorInput(
        "nesterov without momentum",
        Phase.CONSTRUCT,
        HyperparameterError,
        "nesterov",
        hyperparameters={"base": "sgd", "nesterov": True},
    ),
    ErrorInput(
        "nesterov not a bool",
        Phase.CONSTRUCT,
        HyperparameterError,
        "nesterov",
        hyperparameters={"base": "sgd", "momentum": 0.9, "nesterov": 1},
    ),
)


@st.composite
def _projection_described(draw):
    """No projection, or a ball about the origin (a centre needs n: the projection properties set it)."""
    return {"radius": draw(st.none() | strategies.floats(0.5, 20.0), label="radius")}


_PROJECTION_ERROR_INPUTS = tuple(
    ErrorInput(f"radius {value!r}", Phase.CONSTRUCT, HyperparameterError, "radius", hyperparameters={"radius": value})
    for value in (0.0, -1.0, float("nan"), float("inf"), "1", True)
) + (
    ErrorInput(
        "center without a radius",
        Phase.CONSTRUCT,
        HyperparameterError,
        "center",
        hyperparameters={"center": np.zeros(3)},
    ),
    ErrorInput(
        "center with NaN",
        Phase.CONSTRUCT,
        HyperparameterError,
        "center",
        hyperparameters={"radius": 1.0, "center": np.array([np.nan, 0.0, 0.0])},
    ),
    ErrorInput(
        "center of the wrong length",
        Phase.INIT,
        HyperparameterError,
        "center",
        hyperparameters={"radius": 1.0, "center": np.zeros(2)},
    ),
)
_TO_RANGES = {"lr": (1e-3, 1.0), "lr_b": (0.0, 1.0), "lr_decay": (0.9, 1.0), "lr_opt_decay": (0.9, 1.0)}


def _trainable_optimizer_row(algo: str, linear_rate: str, extra_ranges=None, extra_error_inputs=()) -> AlgorithmInfo:
    """The three TO variants differ only in the name of the linear part's rate (and full TO's memory limit)."""
    return AlgorithmInfo(
        algo,
        {**_TO_RANGES, linear_rate: (0.0, 0.02), **(extra_ranges or {})},
        (
            Sample("α 0.5, η 0.01, η^b 0.1", {"lr": 0.5, linear_rate: 0.01, "lr_b": 0.1}),
            Sample("momentum case, β 0.9", {"lr": 1.0, linear_rate: 0.0, "lr_b": 0.1}),
            Sample(
                "decaying rates, ball of radius 2",
                {"lr": 0.5, linear_rate: 0.01, "lr_decay": 0.99, "lr_opt_decay": 0.95, "radius": 2.0},
            ),
        ),
        described=_projection_described,
        extra_error_inputs=_PROJECTION_ERROR_INPUTS + tuple(extra_error_inputs),
    )


@st.composite
def _elra_described(draw):
    """ELRA's switches: half the time the defaults, otherwise every mechanism drawn on or off."""
    if draw(st.booleans()):
        return {}
    return {
        "crop": draw(st.none() | strategies.floats(1.0, 10.0), label="crop"),
        "warmup_steps": draw(st.integers(0, 5), label="warmup_steps"),
        "retrace": draw(st.booleans(), label="retrace"),
        "initial_retrace": draw(st.booleans(), label="initial_retrace"),
        "period": draw(st.integers(1, 6), label="period"),
        "batch_control": draw(st.booleans(), label="batch_control"),
        "initial_multiple": draw(st.integers(1, 3), label="initial_multiple"),
        "gradient_decay": draw(st.booleans(), label="gradient_decay"),
        "boost": draw(st.booleans(), label="boost"),
    }


ELRA_EVERY_FEATURE = {
    "crop": 2.0,
    "warmup_steps": 3,
    "period": 3,
    "batch_control": True,
    "initial_multiple": 2,
    "gradient_decay": True,
    "weight_decay": 0.99,
    "boost": True,
}
"""Every switchable mechanism of ELRA on (spec/elra.md), for samples and the rotation property."""

_ELRA_RANGES = {
    "lr": (1e-4, 0.5),
    "max_ratio": (2.0, 1e6),
    "lr_min": (1e-8, 1e-6),
    "lr_max": (10.0, 1e6),
    "warmup_floor": (0.01, 0.5),
    "retrace_sigmas": (0.5, 10.0),
    "weight_decay": (0.9, 1.0),
}


def _elra_error_inputs(algo: str) -> tuple[ErrorInput, ...]:
    """The prose domains (switches, integers, the crop) and the relations between hyperparameters."""
    construct = Phase.CONSTRUCT
    bad_values = [("crop", value) for value in (0.0, -1.0, float("nan"), float("inf"), "2", True)]
    bad_values += [("warmup_steps", value) for value in (-1, 1.5, True)]
    bad_values += [("period", value) for value in (0, 2.5, "3")]
    bad_values += [("initial_multiple", value) for value in (0, 1.5)]
    bad_values += [(flag, 1) for flag in ("retrace", "initial_retrace", "batch_control", "gradient_decay", "boost")]
    inputs = [
        ErrorInput(f"{name}={value!r}", construct, HyperparameterError, name, hyperparameters={name: value})
        for name, value in bad_values
    ]
    inputs += [
        ErrorInput("lr above lr_max", construct, HyperparameterError, "lr", hyperparameters={"lr": 2e6}),
        ErrorInput("lr below lr_min", construct, HyperparameterError, "lr", hyperparameters={"lr": 1e-9}),
        ErrorInput(
            "lr_min above lr_max",
            construct,
            HyperparameterError,
            "lr_min",
            hyperparameters={"lr_min": 1.0, "lr_max": 0.5, "lr": 0.7},
        ),
        ErrorInput(
            "warmup_floor above crop",
            construct,
            HyperparameterError,
            "warmup_floor",
            hyperparameters={"crop": 0.05},
        ),
    ]
    if algo == "elra":
        inputs += [
            ErrorInput(
                f"authors_code with {name}",
                construct,
                HyperparameterError,
                name,
                hyperparameters={"convention": "authors_code", name: value},
            )
            for name, value in (("crop", 2.0), ("batch_control", True), ("weight_decay", 0.99))
        ]
    return tuple(inputs)


def _elra_row(algo: str, *extra_samples: Sample) -> AlgorithmInfo:
    return AlgorithmInfo(
        algo,
        _ELRA_RANGES,
        (
            Sample("the paper's defaults", {}),
            Sample("every mechanism on", ELRA_EVERY_FEATURE),
            Sample("κ = 1, γ_max = 10", {"correction": "none", "max_ratio": 10.0}),
            *extra_samples,
        ),
        described=_elra_described,
        extra_error_inputs=_elra_error_inputs(algo),
    )


CATALOG: dict[str, AlgorithmInfo] = {
    info.algo: info
    for info in (
        AlgorithmInfo("sgd", {"lr": (1e-3, 1.0)}, (Sample("lr 0.1", {"lr": 0.1}),)),
        AlgorithmInfo(
            "momentum", {"lr": (1e-3, 1.0), "beta": (0.0, 0.99)}, (Sample("lr 0.1, β 0.9", {"lr": 0.1, "beta": 0.9}),)
        ),
        AlgorithmInfo(
            "nag", {"lr": (1e-3, 1.0), "beta": (0.0, 0.99)}, (Sample("lr 0.1, β 0.9", {"lr": 0.1, "beta": 0.9}),)
        ),
        AlgorithmInfo(
            "adam",
            {**_ADAPTIVE_RANGES, "betas": ((0.0, 0.99), (0.5, 0.9999))},
            (Sample("lr 0.01, λ 0.01", {"lr": 0.01, "weight_decay": 0.01}), Sample("lr 0.01", {"lr": 0.01})),
        ),
        AlgorithmInfo(
            "adamw",
            {**_ADAPTIVE_RANGES, "betas": ((0.0, 0.99), (0.5, 0.9999))},
            (Sample("lr 0.01, default λ", {"lr": 0.01}), Sample("lr 0.01, λ 0", {"lr": 0.01, "weight_decay": 0.0})),
        ),
        AlgorithmInfo(
            "rmsprop",
            {**_ADAPTIVE_RANGES, "alpha": (0.5, 0.999)},
            (Sample("lr 0.01, λ 0.01", {"lr": 0.01, "weight_decay": 0.01}), Sample("lr 0.01", {"lr": 0.01})),
        ),
        AlgorithmInfo(
            "lion",
            {"lr": (1e-4, 0.1), "weight_decay": (0.0, 0.1), "betas": ((0.0, 0.99), (0.0, 0.999))},
            (Sample("lr 0.01, λ 0.01", {"lr": 0.01, "weight_decay": 0.01}), Sample("lr 0.01", {"lr": 0.01})),
        ),
        AlgorithmInfo(
            "lm_rllc",
            {"c1": (1e-3, 0.3), "c2": (0.0, 0.1), "eps": (0.0, 1e-6)},
            tuple(
                Sample(notation, {"B": p.B, "a": p.a, "c1": 0.05, "c2": 0.01})
                for notation, p in ((t, props.propagator(t)) for t in ("M(0.9) ⊕ M(0.0)",) + props.TABLE_1)
            ),
            described=_lm_rllc_described,
            extra_error_inputs=_propagator_error_inputs("L0", np.array([0.1, 0.1])),
            step_conditioning=memory_conditioning,
        ),
        AlgorithmInfo(
            "rllc",
            {"c1": (1e-3, 0.3), "c2": (0.0, 0.1), "eps": (0.0, 1e-6)},
            (
                Sample(
                    "non-linear rule on M(0.9) ⊕ M(0)",
                    {"rule": _EXAMPLE_RULE, "c1": 0.05, "c2": 0.01, "L0": np.array([0.1, 0.1]), "H0": 0.0},
                ),
            ),
            described=_rllc_described,
            extra_error_inputs=_RLLC_ERROR_INPUTS,
            step_conditioning=memory_conditioning,
        ),
        AlgorithmInfo(
            "linear_memory",
            {},
            (Sample("NAG law on M(0.9) ⊕ M(0)", {"B": _NAG_LAW.B, "a": _NAG_LAW.a, "L": np.array([0.09, 0.1])}),),
            described=_linear_memory_described,
            extra_error_inputs=_propagator_error_inputs("L", np.array([0.09, 0.1])),
        ),
        AlgorithmInfo(
            _MO,
            {
                "alpha0": (1e-3, 0.3),
                "eta": (0.0, 0.05),
                "gamma": (0.0, 1.0),
                "rho": (0.0, 0.99),
                "lam": (0.5, 0.999),
                "c": (0.0, 0.99),
                "kappa": (0.0, 0.1),
                "eps": (1e-8, 1e-3),
                "meta_rho": (0.0, 0.99),
                "meta_lam": (0.5, 0.999),
                "meta_c": (0.0, 0.99),
                "meta_kappa": (0.0, 0.5),
                "meta_eps": (1e-8, 1e-3),
            },
            (
                Sample(
                    "(adamw, adam), full, exact Hessian, κ 0.1",
                    {
                        "base": "adamw",
                        "meta": "adam",
                        "alpha0": 0.01,
                        "kappa": 0.1,
                        "approximation": "full",
                        "hessian": "exact",
                    },
                ),
                Sample(
                    "(sgd, sgd), 2x2, exact Hessian", {"base": "sgd", "meta": "sgd", "alpha0": 0.05, "hessian": "exact"}
                ),
                Sample("Algorithm 3 (lion, lion)", {"base": "lion", "meta": "lion", "alpha0": 1e-3, "kappa": 0.1}),
                Sample(
                    "IDBD configuration",
                    {
                        "base": "sgd",
                        "meta": "sgd",
                        "alpha0": 0.05,
                        "eta": 0.01,
                        "blocks": "weightwise",
                        "approximation": "L",
                        "hessian": "diagonal",
                        "clip_decay": True,
                        "order": "meta_first",
                    },
                ),
                Sample(
                    "authors' code (adamw, adam)",
                    {
                        "base": "adamw",
                        "meta": "adam",
                        "alpha0": 1e-3,
                        "convention": "authors_code",
                    },
                ),
            ),
            described=_metaoptimize_described,
            extra_error_inputs=_METAOPTIMIZE_ERROR_INPUTS,
        ),
        AlgorithmInfo(
            "idbd", {"alpha0": (1e-3, 0.2), "eta": (0.0, 0.05)}, (Sample("Sutton 1992", {"alpha0": 0.05, "eta": 0.01}),)
        ),
        AlgorithmInfo(
            "idbd_nonlinear",
            {"alpha0": (1e-3, 0.2), "eta": (0.0, 0.05)},
            (Sample("α₀ 0.05, η 0.01", {"alpha0": 0.05, "eta": 0.01}),),
        ),
        AlgorithmInfo(
            "hypergradient",
            {
                "alpha0": (0.0, 0.3),
                "hypergradient_lr": (0.0, 0.01),
                "betas": ((0.0, 0.99), (0.5, 0.9999)),
                "eps": (1e-10, 1e-4),
                "momentum": (0.0, 0.99),
                "weight_decay": (0.0, 0.1),
            },
            (
                Sample("Adam-HD", {"base": "adam", "alpha0": 0.01, "hypergradient_lr": 1e-4}),
                Sample("SGD-HD", {"base": "sgd", "alpha0": 0.05, "hypergradient_lr": 1e-3}),
                Sample(
                    "SGDN-HD, L2",
                    {
                        "base": "sgd",
                        "alpha0": 0.01,
                        "hypergradient_lr": 1e-3,
                        "momentum": 0.9,
                        "nesterov": True,
                        "weight_decay": 1e-4,
                    },
                ),
            ),
            described=_hypergradient_described,
            extra_error_inputs=_HYPERGRADIENT_ERROR_INPUTS,
        ),
        _trainable_optimizer_row(
            "trainable_optimizer",
            "lr_A",
            extra_ranges={"max_memory": (1e6, 1e9)},
            extra_error_inputs=(
                ErrorInput(
                    "n² state above max_memory",
                    Phase.INIT,
                    StateError,
                    "theta0",
                    hyperparameters={"max_memory": 64.0},
                ),
            ),
        ),
        _trainable_optimizer_row("diagonal_to", "lr_a"),
        _trainable_optimizer_row("rank_one_to", "lr_uv"),
        _elra_row("elra", Sample("the authors' January-2024 code", {"convention": "authors_code"})),
        _elra_row("elra_lean"),
    )
}
