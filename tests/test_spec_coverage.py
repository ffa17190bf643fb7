"""Gates between the spec pages, the reference, the catalogue and the conformance tests: an algorithm
or a property exists in all of them or fails the build (spec/conformance.md#catalogue)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import numpy as np
import pytest

import stepspec.conformance
from stepspec import reference, spec
from stepspec.backends.reference import BACKEND as REFERENCE
from stepspec.conformance.catalog import CATALOG
from stepspec.conformance.convergence import BUDGETS


def test_every_algorithm_has_a_spec_section_and_a_catalogue_row():
    assert set(reference.ALGORITHMS) == set(spec.sections()) == set(CATALOG)


@pytest.mark.parametrize("algo", sorted(reference.ALGORITHMS))
def test_reference_signature_matches_the_spec_table(algo):
    parameters = inspect.signature(reference.ALGORITHMS[algo]).parameters
    table = spec.section(algo).hyperparameters
    assert list(parameters) == [h.name for h in table], "same names, in the spec's order"
    for h in table:
        default = parameters[h.name].default
        if h.default == spec.REQUIRED:
            assert default is inspect.Parameter.empty, h.name
        elif h.default == spec.COMPUTED:
            assert default is None, f"{h.name}: a computed default is written None in the signature"
        else:
            assert np.all(np.equal(default, h.default)), (h.name, default, h.default)
            h.domain.check(h.name, default)  # the default lies in its own domain


@pytest.mark.parametrize("algo", sorted(CATALOG))
def test_catalogue_boxes_lie_in_the_domains(algo):
    info = CATALOG[algo]
    for h in info.spec.hyperparameters:
        if isinstance(h.domain, spec.Interval):
            low, high = info.ranges[h.name]
            assert h.domain.low <= low < high <= h.domain.high, h.name
        elif isinstance(h.domain, spec.Product):
            for factor, (low, high) in zip(h.domain.factors, info.ranges[h.name]):
                assert factor.low <= low < high <= factor.high, h.name


@pytest.mark.parametrize("algo", sorted(CATALOG))
def test_samples_construct(algo):
    info = CATALOG[algo]
    for sample in info.samples:
        reference.ALGORITHMS[algo](**info.materialize(sample.hyperparameters, REFERENCE))


def _spec_properties() -> set[str]:
    names = set()
    for page in spec.spec_dir().glob("*.md"):
        for table in spec.tables(page.read_text(encoding="utf-8")):
            if table[0][0].lower() == "property" or (len(table[0]) > 1 and table[0][1].lower() == "property"):
                column = 0 if table[0][0].lower() == "property" else 1
                names |= {row[column].strip("`") for row in table[1:]}
    return names


def _conformance_properties() -> set[str]:
    names = set()
    for info in pkgutil.iter_modules(stepspec.conformance.__path__):
        if info.name.startswith("test_"):
            module = importlib.import_module(f"stepspec.conformance.{info.name}")
            names |= {n.removeprefix("test_") for n in vars(module) if n.startswith("test_")}
    return names


def test_every_property_is_specified_and_every_specified_property_is_tested():
    specified, tested = _spec_properties(), _conformance_properties()
    assert tested - specified == set(), "conformance tests no spec page lists"
    assert specified - tested == set(), "spec properties without a conformance test"


def test_convergence_page_states_every_budget():
    page = spec.page("convergence")
    for (algo, problem), budget in BUDGETS.items():
        row = next(line for line in page.splitlines() if line.startswith(f"| {algo} |"))
        column = {"quadratic": 2, "logistic": 3, "minibatch_logistic": 4}[problem]
        assert re.search(rf"/ {budget}\b", row.split("|")[column + 1]), (algo, problem, budget, row)


def test_every_page_is_indexed_in_the_readme():
    readme = (spec.spec_dir().parent / "README.md").read_text(encoding="utf-8")
    for page in spec.spec_dir().glob("*.md"):
        assert f"spec/{page.name}" in readme, page.name
