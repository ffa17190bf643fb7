"""The domain grammar of spec tables (stepspec/spec.py) and the validation built on it."""

from __future__ import annotations

import math

import pytest

from stepspec import HyperparameterError, spec


@pytest.mark.parametrize(
    "text, inside, outside",
    [
        ("(0, ∞)", [1e-300, 5.0], [0.0, -1.0, math.inf, math.nan]),
        ("[0, 1)", [0.0, 0.999], [1.0, -1e-12, math.nan]),
        ("[−1, 1]", [-1.0, 1.0], [1.0 + 1e-12, -2.0]),
    ],
)
def test_intervals(text, inside, outside):
    domain = spec.parse_domain(text)
    assert isinstance(domain, spec.Interval)
    for x in inside:
        assert domain.check("x", x) == x
    for x in outside:
        with pytest.raises(HyperparameterError, match="x"):
            domain.check("x", x)
    for x in domain.outside():  # the derived error inputs really are outside
        with pytest.raises(HyperparameterError):
            domain.check("x", x)


def test_products_choices_and_prose():
    product = spec.parse_domain("[0, 1) × [0, 1)")
    assert isinstance(product, spec.Product) and product.check("betas", (0.9, 0.5)) == (0.9, 0.5)
    for bad in [(0.9,), (0.9, 1.0), "ab", 0.5]:
        with pytest.raises(HyperparameterError, match="betas"):
            product.check("betas", bad)
    choice = spec.parse_domain("{exponential, identity}")
    assert isinstance(choice, spec.Choice) and choice.check("sigma", "identity") == "identity"
    with pytest.raises(HyperparameterError, match="sigma"):
        choice.check("sigma", "linear")
    prose = spec.parse_domain("real k×k matrix, spectral radius ρ(B) < 1")
    assert isinstance(prose, spec.Described) and prose.check("B", "anything") == "anything"


def test_wrong_types_are_hyperparameter_errors():
    for bad in ["0.1", None, True, 1 + 2j]:
        with pytest.raises(HyperparameterError, match="lr"):
            spec.check_hyperparameters("sgd", lr=bad)


def test_defaults_parse():
    assert spec.parse_default("required") == spec.REQUIRED
    assert spec.parse_default("see text") == spec.COMPUTED
    assert spec.parse_default("(0.9, 0.999)") == (0.9, 0.999)
    assert spec.parse_default("−1e-08") == -1e-8


def test_unknown_sections_and_hyperparameters():
    with pytest.raises(KeyError, match="no spec section"):
        spec.section("no_such_algorithm")
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        spec.check_hyperparameters("sgd", lr=0.1, momentum=0.9)
