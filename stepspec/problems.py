"""Test problems with exact gradient, loss and Hessian-vector product (float64 NumPy).

A problem is any object with ``grad(theta)``, and ``loss(theta)`` / ``hvp(theta, v)`` where an
optimizer needs them. A problem with ``batch(t)`` is stochastic: ``run`` uses f_t = problem.batch(t).
Where known, problems expose ``minimizer``, ``min_value`` (f*), ``smoothness`` (L) and
``strong_convexity`` (μ), which the conformance suite uses to pick learning rates and tolerances.
"""

from __future__ import annotations

import functools

import numpy as np


def _vector(name: str, theta, n: int) -> np.ndarray:
    theta = np.asarray(theta, dtype=np.float64)
    if theta.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {theta.shape}")
    return theta


def _orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))  # Haar-distributed


# --------------------------------------------------------------------------- quadratic


class Quadratic:
    """f(θ) = ½ θᵀAθ − bᵀθ with symmetric A; strongly convex when A is positive definite."""

    def __init__(self, A, b):
        A = np.asarray(A, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square matrix, got shape {A.shape}")
        if not np.allclose(A, A.T, rtol=1e-12, atol=0):
            raise ValueError("A must be symmetric (the Hessian of f)")
        if b.shape != (A.shape[0],):
            raise ValueError(f"b must have shape ({A.shape[0]},), got {b.shape}")
        self.A, self.b, self.n = A, b, A.shape[0]
        eigenvalues = np.linalg.eigvalsh(A)
        self.smoothness = float(max(abs(eigenvalues[0]), abs(eigenvalues[-1])))
        self.strong_convexity = float(eigenvalues[0]) if eigenvalues[0] > 0 else None

    def loss(self, theta):
        theta = _vector("theta", theta, self.n)
        return float(0.5 * theta @ self.A @ theta - self.b @ theta)

    def grad(self, theta):
        return self.A @ _vector("theta", theta, self.n) - self.b

    def hvp(self, theta, v):
        _vector("theta", theta, self.n)
        return self.A @ _vector("v", v, self.n)

    def third(self, theta, u, v):
        """∇³f[u, v] = 0: the Hessian is constant."""
        _vector("theta", theta, self.n)
        return np.zeros(self.n)

    @functools.cached_property
    def minimizer(self):
        return np.linalg.solve(self.A, self.b) if self.strong_convexity else None

    @functools.cached_property
    def min_value(self):
        return self.loss(self.minimizer) if self.strong_convexity else None

    @property
    def condition_number(self) -> float:
        return self.smoothness / self.strong_convexity if self.strong_convexity else np.inf


def quadratic(A, b) -> Quadratic:
    return Quadratic(A, b)


def random_quadratic(n: int, condition: float = 10.0, seed: int = 0) -> Quadratic:
    """A = Q diag(λ) Qᵀ with λ log-spaced in [1/condition, 1] (so L = 1, μ = 1/condition), b ~ N(0, I)."""
    rng = np.random.default_rng(seed)
    q = _orthogonal(n, rng)
    eigenvalues = np.logspace(-np.log10(condition), 0, n) if n > 1 else np.ones(1)
    A = (q * eigenvalues) @ q.T
    return Quadratic((A + A.T) / 2, rng.standard_normal(n))


# --------------------------------------------------------------------------- finite sums


class LeastSquares:
    """f(θ) = (1/2m) ‖Xθ − y‖² over m rows."""

    def __init__(self, X, y):
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X must be m×n and y of shape (m,), got {X.shape} and {y.shape}")
        self.X, self.y = X, y
        self.m, self.n = X.shape

    def subset(self, rows) -> LeastSquares:
        return LeastSquares(self.X[rows], self.y[rows])

    def loss(self, theta):
        r = self.X @ _vector("theta", theta, self.n) - self.y
        return float(r @ r / (2 * self.m))

    def grad(self, theta):
        return self.X.T @ (self.X @ _vector("theta", theta, self.n) - self.y) / self.m

    def hvp(self, theta, v):
        _vector("theta", theta, self.n)
        return self.X.T @ (self.X @ _vector("v", v, self.n)) / self.m

    def third(self, theta, u, v):
        """∇³f[u, v] = 0: the Hessian XᵀX/m is constant."""
        _vector("theta", theta, self.n)
        return np.zeros(self.n)

    @functools.cached_property
    def _gram_eigenvalues(self):
        return np.linalg.eigvalsh(self.X.T @ self.X / self.m)

    @property
    def smoothness(self):
        return float(self._gram_eigenvalues[-1])

    @property
    def strong_convexity(self):
        mu = float(self._gram_eigenvalues[0])
        return mu if mu > 1e-12 * self.smoothness else None

    @functools.cached_property
    def minimizer(self):
        return np.linalg.lstsq(self.X, self.y, rcond=None)[0]

    @functools.cached_property
    def min_value(self):
        return self.loss(self.minimizer)


def least_squares(X, y) -> LeastSquares:
    return LeastSquares(X, y)


def random_least_squares(m: int, n: int, noise: float = 0.1, seed: int = 0) -> LeastSquares:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n))
    return LeastSquares(X, X @ rng.standard_normal(n) + noise * rng.standard_normal(m))


def _softplus(z):
    return np.logaddexp(0.0, z)


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic function


class Logistic:
    """L2-regularised logistic regression, labels y_i ∈ {−1, +1}:
    f(θ) = (1/m) Σ_i log(1 + exp(−y_i x_iᵀθ)) + (l2/2) ‖θ‖²."""

    def __init__(self, X, y, l2: float):
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X must be m×n and y of shape (m,), got {X.shape} and {y.shape}")
        if not np.all(np.isin(y, (-1.0, 1.0))):
            raise ValueError("labels y must be −1 or +1")
        if not l2 >= 0:
            raise ValueError(f"l2 must be ≥ 0, got {l2}")
        self.X, self.y, self.l2 = X, y, float(l2)
        self.m, self.n = X.shape

    def subset(self, rows) -> Logistic:
        return Logistic(self.X[rows], self.y[rows], self.l2)

    def loss(self, theta):
        theta = _vector("theta", theta, self.n)
        return float(np.mean(_softplus(-self.y * (self.X @ theta))) + 0.5 * self.l2 * theta @ theta)

    def grad(self, theta):
        theta = _vector("theta", theta, self.n)
        weights = -self.y * _sigmoid(-self.y * (self.X @ theta))  # d/dz softplus(−y z) = −y σ(−y z)
        return self.X.T @ weights / self.m + self.l2 * theta

    def hvp(self, theta, v):
        theta, v = _vector("theta", theta, self.n), _vector("v", v, self.n)
        p = _sigmoid(self.X @ theta)
        return self.X.T @ (p * (1 - p) * (self.X @ v)) / self.m + self.l2 * v

    def third(self, theta, u, v):
        """∇³f[u, v] = Xᵀ(p(1 − p)(1 − 2p) ⊙ Xu ⊙ Xv)/m, p = σ(Xθ): the derivative of ∇²f u along v."""
        theta, u, v = _vector("theta", theta, self.n), _vector("u", u, self.n), _vector("v", v, self.n)
        p = _sigmoid(self.X @ theta)
        return self.X.T @ (p * (1 - p) * (1 - 2 * p) * (self.X @ u) * (self.X @ v)) / self.m

    @property
    def smoothness(self):
        return float(np.linalg.eigvalsh(self.X.T @ self.X)[-1] / (4 * self.m) + self.l2)

    @property
    def strong_convexity(self):
        return self.l2 if self.l2 > 0 else None

    @functools.cached_property
    def minimizer(self):
        """Newton's method with backtracking, to round-off (f is strongly convex when l2 > 0)."""
        if not self.l2 > 0:
            return None
        theta = np.zeros(self.n)
        for _ in range(100):
            g = self.grad(theta)
            if np.linalg.norm(g) <= 1e-14 * max(1.0, np.linalg.norm(theta)):
                break
            p = _sigmoid(self.X @ theta)
            H = self.X.T @ (self.X * (p * (1 - p))[:, None]) / self.m + self.l2 * np.eye(self.n)
            step = np.linalg.solve(H, g)
            t, f0 = 1.0, self.loss(theta)
            while self.loss(theta - t * step) > f0 - 0.25 * t * (g @ step) and t > 1e-10:
                t /= 2
            theta = theta - t * step
        return theta

    @functools.cached_property
    def min_value(self):
        return self.loss(self.minimizer) if self.minimizer is not None else None


def logistic(X, y, l2: float) -> Logistic:
    return Logistic(X, y, l2)


def random_logistic(m: int, n: int, l2: float = 1e-2, seed: int = 0) -> Logistic:
    """Gaussian features, labels from a random linear model with 10% of them flipped (not separable)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, n))
    y = np.sign(X @ rng.standard_normal(n) + 1e-12)
    y[rng.random(m) < 0.1] *= -1
    return Logistic(X, y, l2)


class Softmax:
    """L2-regularised multinomial logistic regression (softmax cross-entropy), labels y_i ∈ {0, …, K−1}:
    f(θ) = (1/m) Σ_i [logsumexp(x_iᵀW) − x_iᵀW_{:, y_i}] + (l2/2)‖W‖², θ = W.ravel() with W of shape
    (d, K), row-major. Every weight is regularised (append a column of ones to X for an intercept)."""

    def __init__(self, X, y, l2: float, classes: int | None = None):
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(f"X must be m×d and y of shape (m,), got {X.shape} and {y.shape}")
        if y.dtype.kind not in "iu" or (y.size and y.min() < 0):
            raise ValueError("labels y must be non-negative integers 0 … K−1")
        if not l2 >= 0:
            raise ValueError(f"l2 must be ≥ 0, got {l2}")
        self.classes = int(y.max()) + 1 if classes is None else int(classes)
        self.X, self.y, self.l2 = X, y, float(l2)
        self.m, self.d = X.shape
        self.n = self.d * self.classes
        self._onehot = np.eye(self.classes)[y]

    def subset(self, rows) -> Softmax:
        return Softmax(self.X[rows], self.y[rows], self.l2, self.classes)

    def _weights(self, name, theta):
        return _vector(name, theta, self.n).reshape(self.d, self.classes)

    def _probabilities(self, W):
        logits = self.X @ W
        logits -= logits.max(axis=1, keepdims=True)  # overflow-free
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def loss(self, theta):
        W = self._weights("theta", theta)
        logits = self.X @ W
        top = logits.max(axis=1, keepdims=True)
        log_normaliser = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        data = np.mean(log_normaliser - logits[np.arange(self.m), self.y])
        return float(data + 0.5 * self.l2 * np.sum(W * W))

    def grad(self, theta):
        W = self._weights("theta", theta)
        return (self.X.T @ (self._probabilities(W) - self._onehot) / self.m + self.l2 * W).ravel()

    def hvp(self, theta, v):
        """Xᵀ(P ⊙ XV − P ⊙ rowsum(P ⊙ XV))/m + l2 V: the softmax Jacobian diag(p) − ppᵀ per sample."""
        V = self._weights("v", v)
        p = self._probabilities(self._weights("theta", theta))
        mixed = p * (self.X @ V)
        return (self.X.T @ (mixed - p * _rowsum(mixed)) / self.m + self.l2 * V).ravel()

    def third(self, theta, u, v):
        """The derivative of ∇²f u along v: per sample, d[(diag p − ppᵀ) z] with z = x_iᵀU and
        dp = (diag p − ppᵀ) x_iᵀV."""
        p = self._probabilities(self._weights("theta", theta))
        z, w = self.X @ self._weights("u", u), self.X @ self._weights("v", v)
        dp = p * w - p * _rowsum(p * w)
        return (self.X.T @ (dp * z - dp * _rowsum(p * z) - p * _rowsum(dp * z)) / self.m).ravel()


def _rowsum(a: np.ndarray) -> np.ndarray:
    return a.sum(axis=1, keepdims=True)


class _Batched:
    """A stochastic view of the finite-sum problem ``full``: ``batch(t)`` is f_t; the full problem's
    ``loss``, ``grad``, ``hvp``, ``third``, minimiser and constants stay available for evaluation."""

    def __init__(self, problem, batch_size: int, seed: int = 0):
        if not 1 <= batch_size <= problem.m:
            raise ValueError(f"batch_size must lie in [1, {problem.m}], got {batch_size}")
        self.full, self.batch_size, self.seed, self.n = problem, batch_size, seed, problem.n

    def loss(self, theta):
        return self.full.loss(theta)

    def grad(self, theta):
        return self.full.grad(theta)

    def hvp(self, theta, v):
        return self.full.hvp(theta, v)

    def third(self, theta, u, v):
        return self.full.third(theta, u, v)

    @property
    def minimizer(self):
        return self.full.minimizer

    @property
    def min_value(self):
        return self.full.min_value

    @property
    def smoothness(self):
        return self.full.smoothness

    @property
    def strong_convexity(self):
        return self.full.strong_convexity


class ShuffledEpochs(_Batched):
    """Mini-batches by epochs, as a data loader makes them: each epoch visits every sample once, in the
    order of a permutation drawn from Generator(seed, epoch), in batches of ``batch_size`` (the last one
    smaller when m is not a multiple). Step t (from 1) is batch (t − 1) mod steps_per_epoch of epoch
    (t − 1) // steps_per_epoch."""

    def __init__(self, problem, batch_size: int, seed: int = 0):
        super().__init__(problem, batch_size, seed)
        self.steps_per_epoch = -(-problem.m // batch_size)

    def batch(self, t: int):
        epoch, index = divmod(t - 1, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.full.m)
        return self.full.subset(order[index * self.batch_size : (index + 1) * self.batch_size])


class MiniBatch(_Batched):
    """The seeded mini-batch version of a finite-sum problem: f_t = problem.subset(rows_t), rows_t drawn
    without replacement from Generator(seed, t), so f_t depends only on (seed, t) and any run can be
    replayed. ``minimizer`` and ``min_value`` are those of the full problem."""

    def batch(self, t: int):
        rng = np.random.default_rng([self.seed, t])
        return self.full.subset(rng.choice(self.full.m, size=self.batch_size, replace=False))


class Rotated:
    """f∘R: θ ↦ f(Rθ) for an orthogonal R, with ∇(f∘R)(θ) = Rᵀ∇f(Rθ) and ∇²(f∘R) v = Rᵀ∇²f(Rθ) R v.
    A method started from Rᵀθ_0 on f∘R that is invariant under orthogonal maps follows Rᵀθ_t
    (spec/elra.md); a stochastic problem stays stochastic, batch by batch."""

    def __init__(self, problem, R):
        R = np.asarray(R, dtype=np.float64)
        if R.shape != (problem.n, problem.n) or not np.allclose(R.T @ R, np.eye(problem.n), atol=1e-12):
            raise ValueError(f"R must be an orthogonal {problem.n}×{problem.n} matrix")
        self.problem, self.R, self.n = problem, R, problem.n

    def batch(self, t: int):
        return Rotated(self.problem.batch(t), self.R) if hasattr(self.problem, "batch") else self

    def loss(self, theta):
        return self.problem.loss(self.R @ _vector("theta", theta, self.n))

    def grad(self, theta):
        return self.R.T @ self.problem.grad(self.R @ _vector("theta", theta, self.n))

    def hvp(self, theta, v):
        return self.R.T @ self.problem.hvp(self.R @ _vector("theta", theta, self.n), self.R @ _vector("v", v, self.n))


class Shifted:
    """f + c: the same gradients, every loss moved by the constant c."""

    def __init__(self, problem, c: float):
        self.problem, self.c, self.n = problem, float(c), problem.n

    def loss(self, theta):
        return self.problem.loss(theta) + self.c

    def grad(self, theta):
        return self.problem.grad(theta)


class SuttonTask:
    """The non-stationary linear regression of Sutton 1992, Experiment 1 (spec/idbd.md#experiment-1):
    inputs x ~ N(0, I_n), target y* = Σ_{i<relevant} s_i x_i with s_i = ±1 and no noise; every
    ``flip_every`` examples one s_i, chosen at random, flips sign. f_t = ½(x_tᵀw − y*_t)², a
    one-row least-squares problem; everything is drawn from Generator(seed, t), so f_t depends only on
    (seed, t)."""

    def __init__(self, n: int = 20, relevant: int = 5, flip_every: int = 20, seed: int = 0):
        if not 1 <= relevant <= n:
            raise ValueError(f"relevant must lie in [1, {n}], got {relevant}")
        self.n, self.relevant, self.flip_every, self.seed = n, relevant, flip_every, seed
        self._signs = [np.random.default_rng([seed, 0]).choice((-1.0, 1.0), size=relevant)]

    def signs(self, t: int) -> np.ndarray:
        """s at example t (t ≥ 1); one flip at every t that is a multiple of ``flip_every``."""
        while len(self._signs) <= t // self.flip_every:
            flipped = self._signs[-1].copy()
            flipped[np.random.default_rng([self.seed, 1, len(self._signs)]).integers(self.relevant)] *= -1
            self._signs.append(flipped)
        return self._signs[t // self.flip_every]

    def batch(self, t: int) -> LeastSquares:
        x = np.random.default_rng([self.seed, 2, t]).standard_normal(self.n)
        return LeastSquares(x[None, :], np.array([self.signs(t) @ x[: self.relevant]]))


# --------------------------------------------------------------------------- non-convex


class Rosenbrock:
    """f(θ) = Σ_{i<n} b (θ_{i+1} − θ_i²)² + (a − θ_i)², n ≥ 2; the classic 2-D function for n = 2."""

    def __init__(self, n: int = 2, a: float = 1.0, b: float = 100.0):
        if n < 2:
            raise ValueError(f"Rosenbrock needs n ≥ 2, got {n}")
        self.n, self.a, self.b = n, float(a), float(b)

    def loss(self, theta):
        x = _vector("theta", theta, self.n)
        return float(np.sum(self.b * (x[1:] - x[:-1] ** 2) ** 2 + (self.a - x[:-1]) ** 2))

    def grad(self, theta):
        x = _vector("theta", theta, self.n)
        r = x[1:] - x[:-1] ** 2
        g = np.zeros(self.n)
        g[:-1] += -4 * self.b * x[:-1] * r - 2 * (self.a - x[:-1])
        g[1:] += 2 * self.b * r
        return g

    def hvp(self, theta, v):
        x, v = _vector("theta", theta, self.n), _vector("v", v, self.n)
        head, tail = x[:-1], x[1:]
        diagonal = np.zeros(self.n)
        diagonal[:-1] += 12 * self.b * head**2 - 4 * self.b * tail + 2
        diagonal[1:] += 2 * self.b
        off = -4 * self.b * head  # ∂²f/∂x_i∂x_{i+1}
        hv = diagonal * v
        hv[:-1] += off * v[1:]
        hv[1:] += off * v[:-1]
        return hv

    def third(self, theta, u, v):
        """∇³f[u, v]: the non-zero third derivatives are f_iii = 24b x_i and f_{i,i,i+1} = −4b."""
        x, u, v = _vector("theta", theta, self.n), _vector("u", u, self.n), _vector("v", v, self.n)
        out = np.zeros(self.n)
        head_u, head_v, tail_u, tail_v = u[:-1], v[:-1], u[1:], v[1:]
        out[:-1] += 24 * self.b * x[:-1] * head_u * head_v - 4 * self.b * (head_u * tail_v + tail_u * head_v)
        out[1:] += -4 * self.b * head_u * head_v
        return out

    @property
    def minimizer(self):
        """(a, a²) for n = 2; all ones for a = 1; otherwise not in closed form (None)."""
        if self.n == 2:
            return np.array([self.a, self.a**2])
        return np.ones(self.n) if self.a == 1 else None

    @property
    def min_value(self):
        return 0.0 if self.minimizer is not None else None


class Saddle:
    """f(θ) = θ_1² − θ_2²: a saddle at 0, unbounded below."""

    n = 2
    minimizer = None
    min_value = None

    def loss(self, theta):
        x = _vector("theta", theta, 2)
        return float(x[0] ** 2 - x[1] ** 2)

    def grad(self, theta):
        x = _vector("theta", theta, 2)
        return np.array([2 * x[0], -2 * x[1]])

    def hvp(self, theta, v):
        _vector("theta", theta, 2)
        v = _vector("v", v, 2)
        return np.array([2 * v[0], -2 * v[1]])

    def third(self, theta, u, v):
        _vector("theta", theta, 2)
        return np.zeros(2)
