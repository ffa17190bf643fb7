"""Backends for the CLI tests, loaded as `--backend tests.backends_for_cli:NAME`."""

from stepspec.backends.reference import ReferenceBackend
from stepspec.reference import momentum, sgd


def _upside_down_sgd(lr):
    """SGD that climbs: a broken port the suite must flag."""
    optimizer = sgd(lr)
    optimizer._G = lambda s, obs: optimizer.lr * obs.grad
    return optimizer


PARTIAL = ReferenceBackend({"sgd": sgd, "momentum": momentum}, name="partial")
BROKEN_SGD = ReferenceBackend({"sgd": _upside_down_sgd}, name="broken-sgd")
