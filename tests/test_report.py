"""The report's figures and the messages' values (spec/conformance.md#report, #messages)."""

from __future__ import annotations

import ast
import math

import numpy as np

from stepspec.conformance.assertions import Context, Record, show_value
from stepspec.conformance.catalog import MemoryRuleSpec
from stepspec.conformance.report import compact


def test_hyperparameters_print_round_trippably():
    M = np.array([[1.0, 1.0 + 2.0**-52], [1e-17, np.nextafter(0.3, 1.0)]])  # near-singular, last bits matter
    shown = Context("lm_rllc", "p", {"M": M, "c1": 0.1 + 0.2, "betas": (0.9, np.float64(0.999))}).suffix()
    values = ast.literal_eval(shown.removeprefix("; hyperparameters: "))
    assert np.array_equal(np.array(values["M"]), M) and values["c1"] == 0.1 + 0.2 and values["betas"] == (0.9, 0.999)
    rule = MemoryRuleSpec(M, np.array([1.0, 0.0]), np.zeros((2, 2)), decay=0.1)
    assert show_value(rule).startswith("MemoryRuleSpec(B=[[1.0, 1.0000000000000002], [1e-17, ")
    assert show_value(np.zeros(100)) == "<array of shape (100,)>"


def test_figures_are_compact():
    assert compact(176192692740329.406) == "1.76e+14" and compact(0.000123456) == "0.000123"
    assert compact(0.0) == "0" and compact(math.inf) == "inf"


def test_examples_count_the_search_not_the_shrinking():
    record = Record()
    for deviation, failed in [(1.0, False), (2.0, False), (9.0, True)]:  # the search: the third fails
        record.start_example()
        record.observe(deviation, 1.0)
        record.end_example(failed)
    for deviation in (7.0, 5.0, 3.0):  # shrinking: smaller failing examples, the last one is reported
        record.start_example()
        record.observe(deviation, 1.0)
        record.end_example(True)
    assert record.summary() == (3, 9.0, 9.0)
    plain = Record()
    plain.observe(0.5, 2.0)  # a test without hypothesis is one example
    assert plain.summary() == (1, 0.5, 0.25)
