"""Drop-in ``torch.optim.Optimizer`` classes for every algorithm of the spec (spec/backends.md#drop-in-optimizers).

Each class is a thin adapter (``StepspecOptimizer``) over the functional optimizer of the torch backend,
``stepspec.backends.torch.ALGORITHMS[algorithm]``; its constructor takes ``params`` and the spec's
hyperparameters with the spec's defaults::

    import stepspec.torch as st
    from stepspec.reference import propagator

    optimizer = st.LMRLLC(model.parameters(), *propagator("M(0.9) ⊕ M(0)"), c1=0.05)
    for x, y in batches:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()

``StepspecOptimizer`` documents what every class shares: param groups, parameters without a gradient,
the closure contract, what is checked before anything changes. Each class says which of its
hyperparameters may differ between param groups and whether ``step`` needs a closure.
"""

from __future__ import annotations

from ._optimizer import StepspecOptimizer

__all__ = [
    "ELRA",
    "IDBD",
    "LMRLLC",
    "NAG",
    "OPTIMIZERS",
    "RLLC",
    "SGD",
    "Adam",
    "AdamW",
    "DiagonalTO",
    "ELRALean",
    "Hypergradient",
    "HypergradientAdam",
    "HypergradientSGD",
    "IDBDNonlinear",
    "LinearMemory",
    "Lion",
    "MetaOptimize",
    "Momentum",
    "RMSprop",
    "RankOneTO",
    "StepspecOptimizer",
    "TrainableOptimizer",
]

_ELEMENTWISE = (
    "Elementwise: each parameter is its own optimizer, so every hyperparameter may differ between param "
    "groups. No closure needed."
)


# --------------------------------------------------------------------------- classical (spec/classical.md)


class SGD(StepspecOptimizer):
    __doc__ = f"SGD, spec/classical.md#sgd: θ ← θ − lr·g. {_ELEMENTWISE}"
    algorithm = "sgd"
    elementwise = True


class Momentum(StepspecOptimizer):
    __doc__ = f"Heavy-ball momentum, spec/classical.md#momentum: m ← βm + g, θ ← θ − lr·m. {_ELEMENTWISE}"
    algorithm = "momentum"
    elementwise = True


class NAG(StepspecOptimizer):
    __doc__ = f"Nesterov momentum, spec/classical.md#nag: θ ← θ − lr·(g + βm). {_ELEMENTWISE}"
    algorithm = "nag"
    elementwise = True


class Adam(StepspecOptimizer):
    __doc__ = f"Adam with coupled L2 weight decay, spec/classical.md#adam. {_ELEMENTWISE}"
    algorithm = "adam"
    elementwise = True


class AdamW(StepspecOptimizer):
    __doc__ = f"AdamW (decoupled weight decay), spec/classical.md#adamw. {_ELEMENTWISE}"
    algorithm = "adamw"
    elementwise = True


class RMSprop(StepspecOptimizer):
    __doc__ = f"RMSprop, spec/classical.md#rmsprop. {_ELEMENTWISE}"
    algorithm = "rmsprop"
    elementwise = True


class Lion(StepspecOptimizer):
    __doc__ = f"Lion, spec/classical.md#lion. {_ELEMENTWISE}"
    algorithm = "lion"
    elementwise = True


# --------------------------------------------------------------------------- RLLC (spec/rllc.md)


class LinearMemory(StepspecOptimizer):
    """The fixed-law linear memory L(B, a, L), spec/rllc.md#linear_memory: M ← MB + gaᵀ, θ ← θ − ML.
    Elementwise (no reduction across parameters): each param group may have its own B, a, L (and so its
    own number of memory units). No closure needed. The memory M is stored per parameter as a list of
    k tensors (``optimizer.state[p]["M"]``)."""

    algorithm = "linear_memory"
    elementwise = True


class LMRLLC(StepspecOptimizer):
    """LM-RLLC F(B, a, c1, c2), spec/rllc.md#lm_rllc: the law L (k,) learns from M⁺g, whose Gram matrix
    MᵀM and Mᵀg are reductions over every parameter of every group. Global: no hyperparameter may differ
    between param groups. No closure needed. M is stored per parameter (a list of k tensors), L under
    the first parameter. Build (B, a) from the paper's notation with
    ``stepspec.reference.propagator("M(0.9) ⊕ M(0)")``."""

    algorithm = "lm_rllc"
    resizable = True


class RLLC(StepspecOptimizer):
    """RLLC with a memory rule U(M, H, g), spec/rllc.md#rllc. Global: no hyperparameter may differ between
    param groups. The rule sees the flat n × k memory and keeps its own hidden state H, so every
    parameter needs a gradient at every step. No closure needed."""

    algorithm = "rllc"


# --------------------------------------------------------------------------- MetaOptimize, IDBD, hypergradient


class MetaOptimize(StepspecOptimizer):
    """MetaOptimize, spec/metaoptimize.md#metaoptimize: step sizes β learned from z = Hᵀg, a reduction per
    block over every parameter of every group. Global: no hyperparameter may differ between param groups.

    ``hessian='free'`` (the default) needs no closure. ``hessian='exact'`` or ``'diagonal'`` needs
    Hessian-vector products, and ``approximation='full'`` third derivatives: pass a closure that calls
    ``loss.backward(create_graph=True)`` and returns the loss. The traces X, Y, Q are stored jointly under
    the first parameter (the torch backend's row-sparse and dense forms), so every parameter needs a
    gradient at every step: leave frozen parameters out of the optimizer."""

    algorithm = "metaoptimize"


class IDBD(StepspecOptimizer):
    """IDBD (Sutton 1992), spec/idbd.md#idbd: weight-wise step sizes with the Hessian's diagonal x² from
    Hessian-vector products. Needs a closure calling ``loss.backward(create_graph=True)``. Global (the
    products couple all parameters): no hyperparameter may differ between param groups."""

    algorithm = "idbd"
    resizable = True


class IDBDNonlinear(StepspecOptimizer):
    """IDBD for non-linear f, spec/idbd.md#idbd_nonlinear: an n × n trace H updated by Hessian-vector
    products, for small models. Needs a closure calling ``loss.backward(create_graph=True)``; every
    parameter needs a gradient at every step. Global: no hyperparameter may differ between param groups."""

    algorithm = "idbd_nonlinear"


class Hypergradient(StepspecOptimizer):
    """Hypergradient descent (SGD-HD, SGDN-HD, Adam-HD), spec/hypergradient.md: one scalar step size α
    learned from g·∇_α u, an inner product over every parameter of every group. Global: no hyperparameter
    may differ between param groups. No closure needed."""

    algorithm = "hypergradient"
    resizable = True


class HypergradientSGD(Hypergradient):
    """``Hypergradient`` with base='sgd' (SGD-HD; heavy-ball or Nesterov momentum by ``momentum``,
    ``nesterov``)."""

    fixed = {"base": "sgd"}


class HypergradientAdam(Hypergradient):
    """``Hypergradient`` with base='adam' (Adam-HD)."""

    fixed = {"base": "adam"}


# --------------------------------------------------------------------------- the Trainable Optimizer


class _CenteredTO(StepspecOptimizer):
    """A projection centre is a vector over all parameters: with one, every parameter needs a gradient
    at every step."""

    @property
    def resizable(self) -> bool:
        return self.param_groups[0]["center"] is None


class TrainableOptimizer(StepspecOptimizer):
    """The full pseudo-linear Trainable Optimizer, spec/trainable_optimizer.md#trainable_optimizer: ĝ(x) =
    Ax + b with A n × n over all parameters (small models: ``max_memory``). Every parameter needs a
    gradient at every step. Global: no hyperparameter may differ between param groups. No closure
    needed."""

    algorithm = "trainable_optimizer"


class DiagonalTO(_CenteredTO):
    """Diagonal TO, spec/trainable_optimizer.md#diagonal_to: ĝ(x) = a⊙x + b. Global (the step-size
    schedules' counter, the projection's norm): no hyperparameter may differ between param groups. No
    closure needed."""

    algorithm = "diagonal_to"


class RankOneTO(_CenteredTO):
    """RankOne TO, spec/trainable_optimizer.md#rank_one_to: ĝ(x) = u(vᵀx) + b, vᵀx and uᵀr reductions over
    every parameter of every group. Global: no hyperparameter may differ between param groups. No
    closure needed. A parameter that gets its first gradient after the first step starts with v = 1/√n
    of its own size, not of the whole."""

    algorithm = "rank_one_to"


# --------------------------------------------------------------------------- ELRA


class _BatchController(StepspecOptimizer):
    resizable = True

    @property
    def batch_multiple(self) -> int:
        """m_t, ELRA's batch-size controller (spec/elra.md#batch-multiple): how many minimal batches the
        next observation must average — ``initial_multiple`` before the first step, then the state field
        ``multiple``. It changes only with ``batch_control=True``. A training loop follows it::

            optimizer = stepspec.torch.ELRA(model.parameters(), batch_control=True, period=batches_per_epoch)
            while training:
                batches = [next(stream) for _ in range(optimizer.batch_multiple)]

                def closure():
                    optimizer.zero_grad()
                    loss = sum(loss_fn(model(x), y) for x, y in batches) / len(batches)
                    loss.backward()
                    return loss

                optimizer.step(closure)
        """
        return self.state.get(self._holder, {}).get("multiple", self.param_groups[0]["initial_multiple"])


class ELRA(_BatchController):
    """ELRA, spec/elra.md#elra: a step size α from the last two gradients, retraces on a rising loss, and
    a batch-size controller (``batch_multiple``). Needs the loss: ``step(closure)``, the closure returning
    it (it computes the gradients, as for torch's LBFGS). Global (α from inner products over every
    parameter of every group): no hyperparameter may differ between param groups. A retrace moves the
    parameters back to the last step's start, so the model's weights can rise and fall step to step."""

    algorithm = "elra"


class ELRALean(_BatchController):
    """ELRA's memory-lean form, spec/elra.md#elra_lean (one stored vector fewer); otherwise as ``ELRA``."""

    algorithm = "elra_lean"


OPTIMIZERS: dict[str, type[StepspecOptimizer]] = {
    cls.algorithm: cls
    for cls in (
        SGD,
        Momentum,
        NAG,
        Adam,
        AdamW,
        RMSprop,
        Lion,
        RLLC,
        LMRLLC,
        LinearMemory,
        MetaOptimize,
        IDBD,
        IDBDNonlinear,
        Hypergradient,
        TrainableOptimizer,
        DiagonalTO,
        RankOneTO,
        ELRA,
        ELRALean,
    )
}
"""Algorithm id → drop-in class."""
