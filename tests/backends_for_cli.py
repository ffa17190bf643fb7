"""Backends for the CLI tests, loaded as `--backend tests.backends_for_cli:NAME`: realistic broken ports."""

from stepspec.backends.reference import ReferenceBackend
from stepspec.errors import ObservationError
from stepspec.reference import momentum, sgd


def _upside_down_sgd(lr):
    """SGD that climbs: a broken port the suite must flag."""
    optimizer = sgd(lr)
    optimizer._G = lambda s, obs: optimizer.lr * obs.grad
    return optimizer


def _dampened_momentum(lr, beta=0.9):
    """Momentum with torch's `dampening` applied by mistake: m = β m + (1 − β) g."""
    optimizer = momentum(lr, beta)
    optimizer._F = lambda s, obs: s.replace(m=optimizer.beta * s.m + (1 - optimizer.beta) * obs.grad)
    return optimizer


def _sgd_rejecting_large_gradients(lr):
    """SGD that raises on valid input (a port's over-eager check): an unexpected exception."""
    optimizer = sgd(lr)
    step = optimizer._G

    def G(s, obs):
        if abs(obs.grad).max() > 0.5:
            raise ObservationError("grad", "must be below 0.5")
        return step(s, obs)

    optimizer._G = G
    return optimizer


def _slow_sgd(lr):
    """SGD with a tenth of the learning rate: converges, but too slowly for the convergence budget."""
    optimizer = sgd(lr)
    optimizer._G = lambda s, obs: -0.1 * optimizer.lr * obs.grad
    return optimizer


PARTIAL = ReferenceBackend({"sgd": sgd, "momentum": momentum}, name="partial")
BROKEN_SGD = ReferenceBackend({"sgd": _upside_down_sgd}, name="broken-sgd")
DAMPENED_MOMENTUM = ReferenceBackend({"momentum": _dampened_momentum}, name="dampened-momentum")
RAISING_SGD = ReferenceBackend({"sgd": _sgd_rejecting_large_gradients}, name="raising-sgd")
SLOW_SGD = ReferenceBackend({"sgd": _slow_sgd}, name="slow-sgd")


def _planted_torch_backend():
    """A copy of the torch backend whose Adam moment update interpolates with β2 instead of β1: one
    realistic slip (the two betas swapped in one line), planted in the source of the torch classical family."""
    import importlib
    import inspect

    import torch

    from stepspec.backends.torch import TorchBackend, _bound

    classical = importlib.import_module("stepspec.backends.torch.classical")
    source = inspect.getsource(classical)
    original = "torch._foreach_add_(m, g, alpha=1 - beta1)"
    assert source.count(original) == 1
    planted = type(classical)(classical.__name__ + "_planted")
    planted.__dict__.update(__package__=classical.__package__, __file__=classical.__file__)
    exec(
        compile(source.replace(original, "torch._foreach_add_(m, g, alpha=1 - beta2)"), "<planted>", "exec"),
        planted.__dict__,
    )
    backend = TorchBackend("float64")
    backend.name = "torch-planted"
    backend.algorithms = {algo: _bound(getattr(planted, algo), torch.float64, "cpu") for algo in ("adam", "adamw")}
    return backend


PLANTED_TORCH = _planted_torch_backend
