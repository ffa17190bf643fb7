"""The conformance suite (spec/conformance.md): hypothesis-driven properties, parametrised over a
backend, that any implementation of the spec can be run against with
``stepspec conform --backend NAME`` or ``pytest --pyargs stepspec.conformance --backend NAME``."""
