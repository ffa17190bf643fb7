"""Every conformance property fails on a deliberately broken implementation (spec/conformance.md
#mutation-checks). Each mutant below changes one thing; the tests it lists are run against it, as
a backend, and must fail. A meta-test checks that every conformance test is in some kill list."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings
from contextlib import contextmanager, nullcontext

import pytest
from hypothesis import HealthCheck, Phase, settings

import stepspec.conformance
from stepspec.backends.reference import BACKEND as REFERENCE
from stepspec.conformance.assertions import Record
from stepspec.errors import StepspecError

from .mutants import (
    Kill,
    SourceMutant,
    WrapperMutant,
    _InPlace,
    _Noisy,
    _StructuredMixedOrder,
    mutant_backend,
    patched,
    structured_backend,
    wrapper_backend,
)

CLASSICAL = "stepspec.reference.classical"
RLLC = "stepspec.reference.rllc"
PROPAGATORS = "stepspec.reference.propagators"
METAOPTIMIZE = "stepspec.reference.metaoptimize"
IDBD = "stepspec.reference.idbd"
HYPERGRADIENT = "stepspec.reference.hypergradient"
TO = "stepspec.reference.trainable_optimizer"
TO_VARIANTS = ("trainable_optimizer", "diagonal_to", "rank_one_to")
ELRA = "stepspec.reference.elra"
BOWL_1E6 = "bowl, ε = 1e-6"
CONDITION_2 = "condition (2): σ above half the mean"
CONDITION_3 = "condition (3): no improvement over three periods"


def K(test, **params):
    return Kill(test, params)


MUTANTS = [
    # ---------------------------------------------------------------- classical
    SourceMutant(
        "sgd-sign",
        CLASSICAL,
        "return -self.lr * obs.grad  # (C2)",
        "return self.lr * obs.grad  # (C2)",
        (
            K("test_equivalence.py::test_equivalence_stepwise", algo="sgd"),
            K("test_equivalence.py::test_equivalence_free_running", algo="sgd"),
            K("test_convergence.py::test_convergence", algo="sgd", problem_name="quadratic"),
        ),
    ),
    SourceMutant(
        "momentum-decay-squared",
        CLASSICAL,
        "m=self.beta * s.m + obs.grad",
        "m=self.beta**2 * s.m + obs.grad",
        (
            K("test_equivalence.py::test_equivalence_stepwise", algo="momentum"),
            K("test_equivalence.py::test_equivalence_free_running", algo="momentum"),
        ),
    ),
    SourceMutant(
        "nag-lookahead-without-beta",
        CLASSICAL,
        "(obs.grad + self.beta * s.m)",
        "(obs.grad + s.m)",
        (
            K("test_classical.py::test_zero_beta_is_sgd", algo="nag"),
            K("test_equivalence.py::test_equivalence_stepwise", algo="nag"),
        ),
    ),
    SourceMutant(
        "momentum-lr-halved",
        CLASSICAL,
        "return -self.lr * s.m  # (C4)",
        "return -0.5 * self.lr * s.m  # (C4)",
        (
            K("test_classical.py::test_zero_beta_is_sgd", algo="momentum"),
            K("test_equivalence.py::test_equivalence_free_running", algo="momentum"),
        ),
    ),
    SourceMutant(
        "adam-bias-correction-beta2",
        CLASSICAL,
        "m_hat = s.m / _bias_correction(beta1, s.step)",
        "m_hat = s.m / _bias_correction(beta2, s.step)",
        (
            K("test_classical.py::test_adam_first_step", algo="adam"),
            K("test_classical.py::test_adam_first_step", algo="adamw"),
        ),
    ),
    SourceMutant(
        "adamw-decay-sign",
        CLASSICAL,
        "return -self.lr * (decay + self._adaptive_step(s))",
        "return -self.lr * (-decay + self._adaptive_step(s))",
        (
            K("test_classical.py::test_adam_first_step", algo="adamw"),
            K("test_equivalence.py::test_equivalence_stepwise", algo="adamw"),
        ),
    ),
    SourceMutant(
        "adamw-gradient-offset",
        CLASSICAL,
        "return obs.grad  # decoupled",
        "return obs.grad + 0.1  # decoupled",
        (K("test_classical.py::test_adamw_without_decay_is_adam"),),
    ),
    SourceMutant(
        "rmsprop-without-1-alpha",
        CLASSICAL,
        "v=self.alpha * s.v + (1 - self.alpha) * g * g",
        "v=self.alpha * s.v + g * g",
        (
            K("test_classical.py::test_rmsprop_first_step"),
            K("test_equivalence.py::test_equivalence_free_running", algo="rmsprop"),
        ),
    ),
    SourceMutant(
        "lion-interpolates-with-beta2",
        CLASSICAL,
        "c=beta1 * s.m + (1 - beta1) * obs.grad",
        "c=beta2 * s.m + (1 - beta2) * obs.grad",
        (
            K("test_classical.py::test_lion_step_is_sign"),
            K("test_equivalence.py::test_equivalence_stepwise", algo="lion"),
        ),
    ),
    SourceMutant(
        "adam-default-eps",
        CLASSICAL,
        "def adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8,",
        "def adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-6,",
        (K("test_api.py::test_hyperparameter_names_and_defaults", algo="adam"),),
    ),
    SourceMutant(
        "needs-without-grad",
        CLASSICAL,
        'frozenset({"grad", "params"}) if',
        'frozenset({"params"}) if',
        (K("test_api.py::test_observation_needs", algo="adam"),),
    ),
    SourceMutant(
        "momentum-state-shape",
        CLASSICAL,
        'return {"m": np.zeros_like(theta0)}',
        'return {"m": np.zeros(1)}',
        (K("test_api.py::test_state_fields", algo="momentum"),),
    ),
    # ---------------------------------------------------------------- RLLC family
    SourceMutant(
        "law-update-sign",
        RLLC,
        "return L + c2 * (relaxed_pinv(M_prev, eps) @ g)",
        "return L - c2 * (relaxed_pinv(M_prev, eps) @ g)",
        (
            K("test_rllc.py::test_m0_rllc_is_adaptive_sgd"),
            K("test_rllc.py::test_rllc_step_projects"),
            K("test_rllc.py::test_relaxed_inverse_limit"),
            K("test_equivalence.py::test_equivalence_stepwise", algo="lm_rllc"),
            K("test_equivalence.py::test_equivalence_free_running", algo="rllc"),
        ),
    ),
    SourceMutant(
        "law-update-with-new-memory",
        RLLC,
        "L=law_update(s.L, s.M, g, self.c2, self.eps)",
        "L=law_update(s.L, linear_memory_update(s.M, g, self.B, self.a), g, self.c2, self.eps)",
        (
            K("test_rllc.py::test_m0_rllc_is_adaptive_sgd"),
            K("test_rllc.py::test_theorem_5_2_non_cyclic_counterexample"),
            K("test_equivalence.py::test_equivalence_stepwise", algo="lm_rllc"),
        ),
    ),
    SourceMutant(
        "pinv-without-cutoff",
        RLLC,
        "cutoff = math.sqrt(M.size) * np.finfo(M.dtype).eps * sigma.max(initial=0.0)",
        "cutoff = 0.0",
        (
            K("test_rllc.py::test_rllc_step_projects"),
            K("test_rllc.py::test_relaxed_inverse_limit"),
            K("test_rllc.py::test_theorem_5_3_orthogonal_basis_from_zero_memory"),
        ),
    ),
    SourceMutant(
        "round-off-singular-values-inverted-when-relaxed",
        RLLC,
        "        coefficients[~kept] = 0.0\n",
        "",
        (K("test_rllc.py::test_relaxed_inverse_limit"),),
    ),
    SourceMutant(
        "tikhonov-tenfold",
        RLLC,
        "coefficients = sigma / (sigma * sigma + eps)",
        "coefficients = sigma / (sigma * sigma + 10 * eps)",
        (
            K("test_rllc.py::test_relaxed_inverse_limit"),
            K("test_rllc.py::test_relaxed_inverse_costs_general_basis"),
        ),
    ),
    SourceMutant(
        "tikhonov-scale-free",
        RLLC,
        "coefficients = sigma / (sigma * sigma + eps)",
        "coefficients = sigma / (sigma * sigma + eps * sigma.max() ** 2)",
        (K("test_rllc.py::test_relaxed_inverse_costs_scale"),),
    ),
    SourceMutant(
        "tikhonov-weighted-per-unit",
        RLLC,
        "        coefficients = sigma / (sigma * sigma + eps)\n",
        "        return np.linalg.solve(M.T @ M + eps * np.diag(np.arange(1.0, M.shape[1] + 1)), M.T)\n",
        (K("test_rllc.py::test_relaxed_inverse_costs_orthogonal_invariance"),),
    ),
    SourceMutant(
        "pinv-is-transpose",
        RLLC,
        "return (Vt.T * coefficients) @ U.T",
        "return M.T",
        (
            K("test_rllc.py::test_lemma_3_8_linear_invariance"),
            K("test_rllc.py::test_theorem_5_2_basis_invariance"),
            K("test_rllc.py::test_theorem_5_2_printed_form_cyclic"),
        ),
    ),
    SourceMutant(
        "memory-update-transposed",
        RLLC,
        "return M @ B + np.outer(g, a)",
        "return M @ B.T + np.outer(g, a)",
        (
            K("test_rllc.py::test_abstract_rule_eq_2"),
            K("test_rllc.py::test_jordan_abstract_rule_app_b"),
            K("test_rllc.py::test_complex_momentum_block"),
            K("test_rllc.py::test_theorem_5_2_basis_invariance"),
            K("test_rllc.py::test_theorem_5_2_printed_form_cyclic"),
            K("test_rllc.py::test_theorem_5_2_non_cyclic_counterexample"),
        ),
    ),
    SourceMutant(
        "memory-ignores-gradient",
        RLLC,
        "return M @ B + np.outer(g, a)",
        "return M @ B + np.outer(g, 0 * a)",
        (
            K("test_rllc.py::test_theorem_5_2_printed_map_fails"),
            K("test_rllc.py::test_theorem_5_3_jordan_basis_from_zero_memory_differs"),
            K("test_rllc.py::test_linear_memory_k1_is_momentum"),
            K("test_rllc.py::test_fixed_laws_sgd_momentum_nag", law="sgd"),
        ),
    ),
    SourceMutant(
        "learning-step-sign",
        RLLC,
        "return -c1 * (M @ L)",
        "return c1 * (M @ L)",
        (
            K("test_rllc.py::test_zero_meta_rate_is_fixed_law"),
            K("test_convergence.py::test_convergence", algo="lm_rllc", problem_name="quadratic"),
        ),
    ),
    SourceMutant(
        "fixed-law-halved",
        RLLC,
        "return -(s.M @ self.L)  # (R6)",
        "return -0.5 * (s.M @ self.L)  # (R6)",
        (
            K("test_rllc.py::test_linear_memory_k1_is_momentum"),
            K("test_rllc.py::test_fixed_laws_sgd_momentum_nag", law="nag"),
            K("test_rllc.py::test_fixed_laws_sgd_momentum_nag", law="momentum"),
        ),
    ),
    SourceMutant(
        "unit-gain-unnormalised",
        RLLC,
        "return w / norm2",
        "return w / np.sqrt(norm2)",
        (K("test_rllc.py::test_zero_meta_rate_is_fixed_law"),),
    ),
    SourceMutant(
        "generic-rllc-double-meta-rate",
        RLLC,
        "L = law_update(s.L, s.M, g, self.c2, self.eps)",
        "L = law_update(s.L, s.M, g, 2 * self.c2, self.eps)",
        (
            K("test_rllc.py::test_linear_rule_is_lm_rllc"),
            K("test_equivalence.py::test_equivalence_stepwise", algo="rllc"),
        ),
    ),
    SourceMutant(
        "rule-output-unchecked",
        RLLC,
        'M = as_real_array("rule", M, HyperparameterError, s.M.shape)',
        "M = np.asarray(M)",
        (K("test_errors.py::test_errors", algo="rllc", case="rule returns M of the wrong shape"),),
    ),
    SourceMutant(
        "radius-bound-2",
        RLLC,
        "if not rho < 1:",
        "if not rho < 2:",
        (
            K("test_errors.py::test_errors", algo="lm_rllc", case="B with spectral radius 1"),
            K("test_rllc.py::test_spectral_radius_not_norm"),
        ),
    ),
    SourceMutant(
        "norm-instead-of-radius",
        RLLC,
        "return float(np.max(np.abs(np.linalg.eigvals(B)), initial=0.0))",
        "return float(np.linalg.norm(B, 2))",
        (K("test_rllc.py::test_spectral_radius_not_norm"),),
    ),
    # ---------------------------------------------------------------- MetaOptimize and its special cases
    SourceMutant(
        "idbd-clips-h-not-the-factor",
        IDBD,
        "h = s.h * np.maximum(1 - alpha * x2, 0.0) - alpha * g",
        "h = np.maximum(s.h * (1 - alpha * x2), 0.0) - alpha * g",
        (K("test_metaoptimize.py::test_idbd_is_a_special_case", algo="idbd"),),
    ),
    SourceMutant(
        "idbd-old-step-size",
        IDBD,
        "alpha = np.exp(beta)  # (I4)",
        "alpha = np.exp(s.beta)  # (I4)",
        (K("test_metaoptimize.py::test_idbd_is_a_special_case", algo="idbd"),),
    ),
    SourceMutant(
        "xu-decay-without-alpha",
        IDBD,
        "H = s.H - alpha[:, None] * hess_H - np.diag(alpha * g)",
        "H = s.H - hess_H - np.diag(alpha * g)",
        (K("test_metaoptimize.py::test_xu_is_a_special_case", algo="idbd_nonlinear"),),
    ),
    SourceMutant(
        "meta-first-uses-old-beta",
        METAOPTIMIZE,
        'beta_for_base = meta.beta if self.order == "meta_first" else s.beta',
        "beta_for_base = s.beta",
        (
            K("test_metaoptimize.py::test_idbd_is_a_special_case", algo="metaoptimize"),
            K("test_metaoptimize.py::test_xu_is_a_special_case", algo="metaoptimize"),
            K("test_metaoptimize.py::test_hypergradient_is_a_special_case", algo="metaoptimize"),
            K("test_metaoptimize.py::test_hypergradient_in_algorithm_1_order"),
        ),
    ),
    SourceMutant(
        "clip-at-one-half",
        METAOPTIMIZE,
        "decay = np.maximum(decay, 0.0)",
        "decay = np.maximum(decay, 0.5)",
        (K("test_metaoptimize.py::test_idbd_is_a_special_case", algo="metaoptimize"),),
    ),
    SourceMutant(
        "hypergradient-sign",
        HYPERGRADIENT,
        "h = -float(g @ s.direction)",
        "h = float(g @ s.direction)",
        (
            K("test_metaoptimize.py::test_hypergradient_is_a_special_case", algo="hypergradient"),
            K("test_hypergradient.py::test_sgd_hd_step_size_rule"),
        ),
    ),
    SourceMutant(
        "adam-hd-epsilon-inside",
        HYPERGRADIENT,
        "direction = (m / b1) / (np.sqrt(v / b2) + self.eps)",
        "direction = (m / b1) / np.sqrt(v / b2 + self.eps)",
        (K("test_hypergradient.py::test_zero_hypergradient_rate_is_the_base", base="adam"),),
    ),
    SourceMutant(
        "adam-hd-authors-is-paper",
        HYPERGRADIENT,
        "direction = math.sqrt(b2) / b1 * m / (np.sqrt(v) + self.eps)",
        "direction = (m / b1) / (np.sqrt(v / b2) + self.eps)",
        (K("test_hypergradient.py::test_adam_hd_authors_epsilon"),),
    ),
    SourceMutant(
        "l-keeps-the-x-coupling",
        METAOPTIMIZE,
        'if self.approximation != "L":',
        "if True:",
        (K("test_metaoptimize.py::test_l_approximation_keeps_y_identity"),),
    ),
    SourceMutant(
        "lion-meta-reacts-to-z",
        METAOPTIMIZE,
        "np.sign(c * m + (1 - c) * z), beta_z=zero",
        "np.sign(c * m + (1 - c) * z), beta_z=np.full_like(z, -eta)",
        (
            K("test_metaoptimize.py::test_lion_meta_keeps_y_identity"),
            K("test_metaoptimize.py::test_surrogate_gradient_lion_meta"),
        ),
    ),
    SourceMutant(
        "meta-rows-without-hessian",
        METAOPTIMIZE,
        "dz = hess_H.T @ Pw",
        "dz = H.T @ Pw",
        (K("test_metaoptimize.py::test_hessian_free_2x2_is_l"),),
    ),
    SourceMutant(
        "sgdm-old-momentum",
        METAOPTIMIZE,
        "D=new_m,",
        "D=m,",
        (K("test_metaoptimize.py::test_zero_meta_rate_is_the_base"),),
    ),
    SourceMutant(
        "adam-meta-moves-at-step-1",
        METAOPTIMIZE,
        "beta=shrink * beta - eta * N.value",
        "beta=shrink * beta - eta * (N.value + 1e-3)",
        (K("test_metaoptimize.py::test_first_meta_step_is_zero"),),
    ),
    SourceMutant(
        "printed-algorithm-2",
        METAOPTIMIZE,
        "C = gamma * Yb + (1 - gamma) * identity",
        "C = Yb",
        (K("test_metaoptimize.py::test_algorithm2_printed_h_update"),),
    ),
    SourceMutant(
        "forcing-with-alpha-not-sigma-prime",
        METAOPTIMIZE,
        "forcing = -(base.D + self.kappa * w) * dalpha",
        "forcing = -(base.D + self.kappa * w) * alpha",
        (
            K("test_metaoptimize.py::test_algorithm3_h_update"),
            K("test_metaoptimize.py::test_hypergradient_is_a_special_case", algo="metaoptimize"),
        ),
    ),
    SourceMutant(
        "trace-without-hessian",
        METAOPTIMIZE,
        "Pw - self.kappa * alpha[:, None] * Pw - (alpha * base.D_g)[:, None] * hess_Pw",
        "Pw - self.kappa * alpha[:, None] * Pw",
        (K("test_metaoptimize.py::test_surrogate_gradient_at_zero_meta_rate"),),
    ),
    SourceMutant(
        "full-without-q-coupling",
        METAOPTIMIZE,
        'dz = dz + np.einsum("k,ikj->ij", g, Ph.reshape(m, n, m))',
        'dz = dz + 0 * np.einsum("k,ikj->ij", g, Ph.reshape(m, n, m))',
        (K("test_metaoptimize.py::test_surrogate_gradient_orders", approximation="full", base="sgd", seed=0),),
    ),
    SourceMutant(
        "meta-rate-ignored",
        METAOPTIMIZE,
        'eta, rho, lam, c, eps = hp["eta"],',
        "eta, rho, lam, c, eps = 0.0,",
        (K("test_metaoptimize.py::test_surrogate_gradient_full_is_not_exact", base="sgd", seed=0),),
    ),
    SourceMutant(
        "adam-meta-hundredfold-slower",
        METAOPTIMIZE,
        "beta=shrink * beta - eta * N.value",
        "beta=shrink * beta - 0.01 * eta * N.value",
        (K("test_metaoptimize.py::test_robust_to_small_initial_step", problem_name="quadratic"),),
    ),
    SourceMutant(
        "authors-code-decays-y",
        METAOPTIMIZE,
        "        if authors:  # the authors' code carries no Y trace",
        "        if False:  # the authors' code carries no Y trace",
        (K("test_metaoptimize.py::test_authors_code_keeps_y_identity"),),
    ),
    SourceMutant(
        "y-decay-ignores-gamma",
        METAOPTIMIZE,
        "Y_beta = meta.beta_beta[:, None] * C + meta.beta_m[:, None] * Pmm",
        "Y_beta = meta.beta_beta[:, None] * Yb + meta.beta_m[:, None] * Pmm",
        (K("test_metaoptimize.py::test_authors_code_keeps_y_identity"),),
    ),
    SourceMutant(
        "alpha-field-is-the-next-steps",
        METAOPTIMIZE,
        "alpha=step_sizes[0],",
        "alpha=sigma(self.sigma, meta.beta)[0],",
        (K("test_metaoptimize.py::test_alpha_is_the_step_size_of_the_step", algo="metaoptimize"),),
    ),
    SourceMutant(
        "adam-meta-old-first-moment",
        METAOPTIMIZE,
        "a, a_z, a_m, m_z = new_m / b1,",
        "a, a_z, a_m, m_z = m / b1,",
        (K("test_metaoptimize.py::test_adam_meta_uses_the_new_moments"),),
    ),
    SourceMutant(
        "authors-code-eps-is-the-papers",
        METAOPTIMIZE,
        "AUTHORS_CODE_EPS = 1e-10",
        "AUTHORS_CODE_EPS = 1e-8",
        (K("test_metaoptimize.py::test_convention_sets_the_epsilons"),),
    ),
    SourceMutant(
        "fixed-meta-decays",
        METAOPTIMIZE,
        'return MetaCell(beta=beta, beta_z=zero, **{**common, "beta_beta": one})',
        'return MetaCell(beta=shrink * beta, beta_z=zero, **{**common, "beta_beta": shrink})',
        (K("test_metaoptimize.py::test_zero_meta_rate_is_the_base"),),
    ),
    SourceMutant(
        "sgd-hd-nesterov-ignored",
        HYPERGRADIENT,
        "direction = g + self.momentum * m if self.nesterov else m",
        "direction = m",
        (
            K("test_hypergradient.py::test_zero_hypergradient_rate_is_the_base", base="sgd"),
            K("test_hypergradient.py::test_sgd_hd_step_size_rule"),
        ),
    ),
    SourceMutant(
        "sgd-hd-dampened-momentum",
        HYPERGRADIENT,
        "m = self.momentum * s.m + g",
        "m = self.momentum * s.m + (1 - self.momentum) * g",
        (
            K("test_hypergradient.py::test_zero_hypergradient_rate_is_the_base", base="sgd"),
            K("test_metaoptimize.py::test_hypergradient_is_a_special_case", algo="hypergradient"),
        ),
    ),
    SourceMutant(
        "hd-hypergradient-without-weight-decay",
        HYPERGRADIENT,
        "h = -float(g @ s.direction)",
        "h = -float(obs.grad @ s.direction)",
        (K("test_hypergradient.py::test_weight_decay_is_l2"),),
    ),
    # ---------------------------------------------------------------- propagator builders (host utilities)
    SourceMutant(
        "jordan-ones-below",
        PROPAGATORS,
        "B = lam * np.eye(m) + np.eye(m, k=1)",
        "B = lam * np.eye(m) + np.eye(m, k=-1)",
        (K("test_propagators.py::test_jordan_block"),),
        patch_module=True,
    ),
    SourceMutant(
        "complex-block-transposed",
        PROPAGATORS,
        "block = np.array([[alpha, -beta], [beta, alpha]])",
        "block = np.array([[alpha, beta], [-beta, alpha]])",
        (
            K("test_propagators.py::test_complex_jordan_block"),
            K("test_propagators.py::test_cj2_matches_the_paper"),
            K("test_propagators.py::test_memory_7_example"),
        ),
        patch_module=True,
    ),
    SourceMutant(
        "complex-a-too-short",
        PROPAGATORS,
        "return Propagator(B, _first_unit(2 * m))",
        "return Propagator(B, _first_unit(m))",
        (K("test_propagators.py::test_table_1", notation="M(0.9) ⊕ M(−0.9) ⊕ CM(0.9i)", k=4),),
        patch_module=True,
    ),
    SourceMutant(
        "split-inside-parentheses",
        PROPAGATORS,
        'if depth == 0 and ch in "⊕+":',
        'if ch in "⊕+":',
        (
            K("test_propagators.py::test_notation_round_trip"),
            K("test_propagators.py::test_memory_7_example"),
        ),
        patch_module=True,
    ),
    SourceMutant(
        "complex-conjugated",
        PROPAGATORS,
        'value = complex(text.replace("i", "j"))',
        'value = complex(text.replace("i", "j")).conjugate()',
        (K("test_propagators.py::test_notation_round_trip"),),
        patch_module=True,
    ),
    SourceMutant(
        "digit-separators-accepted",
        PROPAGATORS,
        '_REAL_CHARS = frozenset("0123456789.+-eE")',
        '_REAL_CHARS = frozenset("0123456789.+-eE_")',
        (K("test_propagators.py::test_malformed_notation", notation="CM(1_0)"),),
        patch_module=True,
    ),
    SourceMutant(
        "radius-warning-misses-the-boundary",
        PROPAGATORS,
        "if not rho < 1]",
        "if rho > 1]",
        (K("test_propagators.py::test_out_of_domain_notation_warns", notation="M(-1)"),),
        patch_module=True,
    ),
    # ---------------------------------------------------------------- trainable optimizer
    SourceMutant(
        "to-full-residual-sign",
        TO,
        "r = s.A @ x + s.b - g",
        "r = s.A @ x + s.b + g",
        (
            K("test_trainable_optimizer.py::test_momentum_special_case", algo="trainable_optimizer"),
            K("test_trainable_optimizer.py::test_approximation_step_is_gradient_descent", algo="trainable_optimizer"),
            K("test_trainable_optimizer.py::test_approximation_loss_decreases", algo="trainable_optimizer"),
            K("test_equivalence.py::test_equivalence_stepwise", algo="trainable_optimizer"),
            K("test_convergence.py::test_convergence", algo="trainable_optimizer", problem_name="quadratic"),
        ),
    ),
    SourceMutant(
        "to-full-step-transposed",
        TO,
        "A = s.A - np.outer(eta_A * r, x)",
        "A = s.A - np.outer(x, eta_A * r)",
        (
            K("test_trainable_optimizer.py::test_approximation_step_is_gradient_descent", algo="trainable_optimizer"),
            K("test_trainable_optimizer.py::test_approximation_loss_decreases", algo="trainable_optimizer"),
        ),
    ),
    SourceMutant(
        "to-diagonal-step-squares-x",
        TO,
        "a = s.a - eta_a * r * x",
        "a = s.a - eta_a * r * x * x",
        (
            K("test_trainable_optimizer.py::test_diagonal_is_full_restricted_to_diagonals"),
            K("test_trainable_optimizer.py::test_approximation_step_is_gradient_descent", algo="diagonal_to"),
            K("test_trainable_optimizer.py::test_approximation_loss_decreases", algo="diagonal_to"),
        ),
    ),
    SourceMutant(
        "to-diagonal-residual-sign",
        TO,
        "r = s.a * x + s.b - g",
        "r = s.a * x + s.b + g",
        (
            K("test_trainable_optimizer.py::test_momentum_special_case", algo="diagonal_to"),
            K("test_convergence.py::test_convergence", algo="diagonal_to", problem_name="minibatch_logistic"),
        ),
    ),
    SourceMutant(
        "to-rank-one-residual-drops-b",
        TO,
        "r = s.u * vx + s.b - g",
        "r = s.u * vx - g",
        (
            K("test_trainable_optimizer.py::test_momentum_special_case", algo="rank_one_to"),
            K("test_trainable_optimizer.py::test_rank_one_b_part_decreases"),
            K("test_trainable_optimizer.py::test_rank_one_updates_follow_the_full_gradient"),
            K("test_convergence.py::test_convergence", algo="rank_one_to", problem_name="logistic"),
        ),
    ),
    SourceMutant(
        "to-rank-one-v-step-uses-new-u",
        TO,
        "v = s.v - eta_uv * x * float(s.u @ r)",
        "v = s.v - eta_uv * x * float(u @ r)",
        (
            K("test_trainable_optimizer.py::test_rank_one_updates_follow_the_full_gradient"),
            K("test_trainable_optimizer.py::test_approximation_step_is_gradient_descent", algo="rank_one_to"),
        ),
    ),
    SourceMutant(
        "to-rank-one-ignores-its-rate",
        TO,
        "eta_uv, eta_b = self.variable_rate(self.lr_uv, t)",
        "eta_uv, eta_b = self.variable_rate(0.0 * self.lr_uv, t)",
        (K("test_trainable_optimizer.py::test_rank_one_uv_step_can_increase_loss"),),
    ),
    SourceMutant(
        "to-rank-one-zero-init",
        TO,
        '"v": np.full_like(theta0, 1 / math.sqrt(n))',
        '"v": np.zeros_like(theta0)',
        (K("test_equivalence.py::test_equivalence_free_running", algo="rank_one_to"),),
    ),
    SourceMutant(
        "to-projection-radius-doubled",
        TO,
        "return y if distance <= self.radius else",
        "return y if distance <= 2 * self.radius else",
        tuple(K("test_trainable_optimizer.py::test_projection_stays_in_ball", algo=a) for a in TO_VARIANTS),
    ),
    SourceMutant(
        "to-projection-ignores-center",
        TO,
        "centre = np.zeros_like(y) if self.center is None else self.center",
        "centre = np.zeros_like(y)",
        (K("test_trainable_optimizer.py::test_projection_stays_in_ball", algo="diagonal_to"),),
    ),
    SourceMutant(
        "to-projection-always-onto-the-sphere",
        TO,
        "return y if distance <= self.radius else centre",
        "return centre",
        tuple(K("test_trainable_optimizer.py::test_projection_inactive_in_large_ball", algo=a) for a in TO_VARIANTS),
    ),
    SourceMutant(
        "to-model-schedule-one-step-ahead",
        TO,
        "return self.lr * self.lr_decay ** (t - 1)",
        "return self.lr * self.lr_decay**t",
        tuple(K("test_trainable_optimizer.py::test_schedules", algo=a) for a in TO_VARIANTS),
    ),
    SourceMutant(
        "to-variable-schedule-one-step-ahead",
        TO,
        "return initial * self.lr_opt_decay ** (t - 1)",
        "return initial * self.lr_opt_decay**t",
        (K("test_trainable_optimizer.py::test_schedules", algo="trainable_optimizer"),),
    ),
    SourceMutant(
        "to-memory-limit-doubled",
        TO,
        "if needed > self.max_memory:",
        "if needed > 2 * self.max_memory:",
        (K("test_errors.py::test_errors", algo="trainable_optimizer", case="n² state above max_memory"),),
    ),
    # ---------------------------------------------------------------- the contract (_core, spec)
    SourceMutant(
        "non-finite-accepted",
        "stepspec._core",
        "if not np.all(np.isfinite(array)):",
        "if False:",
        (K("test_errors.py::test_errors", algo="momentum", case="grad NaN"),),
    ),
    # ---------------------------------------------------------------- ELRA
    SourceMutant(
        "elra-ratio-inverted",
        ELRA,
        "ratio = self.kappa(alpha) * g_prev_sq / denominator",
        "ratio = self.kappa(alpha) * denominator / g_prev_sq",
        (
            K("test_elra.py::test_parabola_exactness", algo="elra"),
            K("test_elra.py::test_barzilai_borwein_step", algo="elra"),
            K("test_elra.py::test_alpha_update_direction", algo="elra"),
            K("test_elra.py::test_two_dimensional_experiments", experiment=BOWL_1E6, convention="paper"),
            K("test_equivalence.py::test_equivalence_stepwise", algo="elra"),
            K("test_convergence.py::test_convergence", algo="elra", problem_name="quadratic"),
        ),
    ),
    SourceMutant(
        "elra-kappa-constant",
        ELRA,
        "1.0 + 0.15 / (1.0 + alpha * alpha)",
        "1.0 + 0.35 / (1.0 + alpha * alpha)",
        (
            K("test_equivalence.py::test_equivalence_stepwise", algo="elra_lean"),
            K("test_elra.py::test_degenerate_gradients", algo="elra"),
            K("test_elra.py::test_lean_form_equals_plain_form"),
        ),
    ),
    SourceMutant(
        "elra-cap-case-divides",
        ELRA,
        "return alpha * self.max_ratio, RATIO_CAP  # (E3)",
        "return alpha / self.max_ratio, RATIO_CAP  # (E3)",
        (
            K("test_elra.py::test_alpha_update_direction", algo="elra"),
            K("test_elra.py::test_degenerate_gradients", algo="elra"),
        ),
    ),
    SourceMutant(
        "elra-zero-denominator-unguarded",
        ELRA,
        "if denominator <= 0.0:\n            return alpha * self.max_ratio",
        "if denominator < 0.0:\n            return alpha * self.max_ratio",
        (K("test_elra.py::test_never_nan", algo="elra"),),
    ),
    SourceMutant(
        "elra-zero-previous-gradient-grows",
        ELRA,
        "return alpha, NO_LIMIT  # the last step was zero",
        "return alpha * self.max_ratio, NO_LIMIT  # the last step was zero",
        (K("test_elra.py::test_degenerate_gradients", algo="elra"),),
    ),
    SourceMutant(
        "elra-retrace-factor-unclamped",
        ELRA,
        "return alpha * min(0.5, 0.5 * alpha * g_prev_sq / denominator)",
        "return alpha * 0.5 * alpha * g_prev_sq / denominator",
        (K("test_elra.py::test_retrace", algo="elra"),),
    ),
    SourceMutant(
        "elra-retrace-printed-norm",  # the paper's ‖G_{t−1}‖ where the parabola needs ‖G_{t−1}‖²
        ELRA,
        "return alpha * min(0.5, 0.5 * alpha * g_prev_sq / denominator)",
        "return alpha * min(0.5, 0.5 * alpha * math.sqrt(g_prev_sq) / denominator)",
        (K("test_elra.py::test_retrace", algo="elra_lean"),),
    ),
    SourceMutant(
        "elra-retrace-steps-from-current-point",
        ELRA,
        "x_from, g_from, f_from = s.x_prev, s.g_prev, s.f_prev  # go back",
        "x_from, g_from, f_from = theta, s.g_prev, s.f_prev  # go back",
        (K("test_elra.py::test_retrace", algo="elra"),),
    ),
    SourceMutant(
        "elra-lean-inner-product-sign",
        ELRA,
        "inner = (self.weight_decay * float(s.x_prev @ g) - float(theta @ g)) / s.alpha",
        "inner = (float(theta @ g) - self.weight_decay * float(s.x_prev @ g)) / s.alpha",
        (
            K("test_elra.py::test_lean_form_equals_plain_form"),
            K("test_elra.py::test_parabola_exactness", algo="elra_lean"),
        ),
    ),
    SourceMutant(
        "elra-lean-retrace-stays",
        ELRA,
        "(decayed_prev - theta) / s.rejected_alpha - theta",
        "(decayed_prev - theta) / s.alpha - theta",
        (K("test_elra.py::test_retrace", algo="elra_lean"),),
    ),
    SourceMutant(
        "elra-coordinate-weights",  # breaks rotation invariance, as a per-coordinate scaling does
        ELRA,
        "g = self.gradient_scale(s) * obs.grad  # (E10)",
        "g = self.gradient_scale(s) * obs.grad * (1 + np.arange(obs.grad.shape[0]) / 4)  # (E10)",
        (K("test_elra.py::test_rotation_invariance", algo="elra"),),
    ),
    SourceMutant(
        "elra-lean-coordinate-weights",
        ELRA,
        "g = scale * obs.grad",
        "g = scale * obs.grad * (1 + np.arange(obs.grad.shape[0]) / 4)",
        (K("test_elra.py::test_rotation_invariance", algo="elra_lean"),),
    ),
    SourceMutant(
        "elra-no-cascade",
        ELRA,
        "exponent = updates - 2 * (updates // 3)",
        "exponent = updates",
        (K("test_elra.py::test_batch_controller", algo="elra"),),
    ),
    SourceMutant(
        "elra-condition-2-threshold",
        ELRA,
        "noisy = std > 0.5 * abs(means[0])",
        "noisy = std > 1.0 * abs(means[0])",
        (K("test_elra.py::test_batch_controller_conditions", algo="elra", script=CONDITION_2),),
    ),
    SourceMutant(
        "elra-condition-1-without-noise-margin",
        ELRA,
        "means[0] > means[1] + std / 10",
        "means[0] > means[1] + std / 100",
        (K("test_elra.py::test_batch_controller_conditions", algo="elra_lean", script=CONDITION_3),),
    ),
    SourceMutant(
        "elra-condition-3-window",
        ELRA,
        "stalled = periods >= 4 and means[3] < min(means[0], means[1], means[2])",
        "stalled = periods >= 3 and means[2] < min(means[0], means[1])",
        (K("test_elra.py::test_batch_controller_conditions", algo="elra", script=CONDITION_3),),
    ),
    SourceMutant(
        "elra-period-counts-steps",
        ELRA,
        "s.period_batches + s.multiple,",
        "s.period_batches + 1,",
        (K("test_elra.py::test_batch_controller", algo="elra_lean"),),
    ),
    SourceMutant(
        "elra-gradient-decay-inverted",
        ELRA,
        "return self.initial_multiple / s.multiple if self.gradient_decay else 1.0",
        "return s.multiple / self.initial_multiple if self.gradient_decay else 1.0",
        (K("test_elra.py::test_gradient_decay", algo="elra"),),
    ),
    SourceMutant(
        "elra-boost-mean-off-by-one",
        ELRA,
        "x_mean=x_sum / count if self.boost else s.x_mean",
        "x_mean=x_sum / (count + 1) if self.boost else s.x_mean",
        (K("test_elra.py::test_boosting", algo="elra"),),
    ),
    SourceMutant(
        "elra-authors-kappa-in-small-dimensions",
        ELRA,
        "alpha = s.alpha / shrink\n",
        "alpha = s.alpha / shrink * self.kappa(s.alpha)\n",
        (K("test_elra.py::test_two_dimensional_experiments", experiment=BOWL_1E6, convention="authors_code"),),
    ),
    SourceMutant(
        "elra-error-damper-capped",  # min(16E, 5e5), the ceiling the reference had before issue 10
        ELRA,
        "error_damper *= 16.0",
        "error_damper = min(16.0 * error_damper, AUTHORS_ERROR_DAMPER)",
        (K("test_elra.py::test_authors_code_error_damper"),),
    ),
    SourceMutant(
        "adam-second-moment-pooled",  # a rotation-invariant Adam: the contrast tests must notice
        CLASSICAL,
        "v=beta2 * s.v + (1 - beta2) * g * g,",
        "v=beta2 * s.v + (1 - beta2) * float(g @ g) / g.shape[0],",
        (
            K("test_elra.py::test_rotation_invariance_fails_for_adam"),
            K("test_elra.py::test_adam_saddle_depends_on_rotation"),
        ),
    ),
    SourceMutant(
        "override-ignored",
        "stepspec._core",
        "return as_real_array(name, value, StateError, default.shape, default.dtype)",
        "return default",
        (K("test_state.py::test_init_overrides_round_trip", algo="momentum"),),
    ),
    SourceMutant(
        "open-interval-closed",
        "stepspec.spec",
        "above = x >= self.low if self.low_closed else x > self.low",
        "above = x >= self.low",
        (K("test_errors.py::test_errors", algo="sgd", case="lr=0.0 outside (0, ∞)"),),
    ),
    WrapperMutant(
        "in-place-F",
        lambda: wrapper_backend(_InPlace, "in-place-F"),
        (
            K("test_state.py::test_inputs_untouched", algo="adam"),
            K("test_errors.py::test_errors", algo="momentum", case="grad NaN"),
        ),
    ),
    WrapperMutant(
        "noisy-G",
        lambda: wrapper_backend(_Noisy, "noisy-G"),
        (
            K("test_state.py::test_deterministic", algo="sgd"),
            K("test_equivalence.py::test_equivalence_free_running", algo="linear_memory"),
        ),
    ),
    WrapperMutant(
        "structure-gradients-column-major",
        lambda: structured_backend(_StructuredMixedOrder, "structure-gradients-column-major"),
        (
            K("test_structured.py::test_structured_parameters", algo="adam"),
            K("test_structured.py::test_structured_parameters", algo="rank_one_to"),
        ),
    ),
]

PRISTINE = {"test_structured.py::test_structured_parameters": structured_backend()}
"""Kill-list tests that need a capability the reference lacks run, on the pristine side, on the reference
behind a correct adapter."""

MUTATION_PROFILE = "stepspec-mutation"
settings.register_profile(
    MUTATION_PROFILE,
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    print_blob=False,
    report_multiple_bugs=False,  # the first failure kills the mutant
)


@contextmanager
def _mutation_settings(test):
    """Run the hypothesis test ``test`` under MUTATION_PROFILE. @given binds the profile that is
    current when the module is imported, so loading a profile later has no effect on it; the bound
    settings are swapped for the duration and restored, since the suite collects the same function."""
    bound = getattr(test, "_hypothesis_internal_use_settings", None)
    if bound is None:  # not a hypothesis test
        yield
        return
    test._hypothesis_internal_use_settings = settings.get_profile(MUTATION_PROFILE)
    try:
        yield
    finally:
        test._hypothesis_internal_use_settings = bound


def _resolve(kill: Kill):
    module_name, function_name = kill.test.split("::")
    module = importlib.import_module(f"stepspec.conformance.{module_name.removesuffix('.py')}")
    params = dict(kill.params)
    if isinstance(params.get("case"), str):
        matches = [
            p.values[1] for p in module._cases() if p.values[0] == params["algo"] and p.values[1].desc == params["case"]
        ]
        assert len(matches) == 1, f"no error input {params['case']!r} for {params['algo']}"
        params["case"] = matches[0]
    return getattr(module, function_name), params


def failure_of(kill: Kill, backend):
    """Run one conformance test against ``backend``; the exception it failed with, or None."""
    test, params = _resolve(kill)
    accepted = inspect.signature(test).parameters
    kwargs = {
        **({"backend": backend} if "backend" in accepted else {}),
        **({"record": Record()} if "record" in accepted else {}),
        **params,
    }
    # As under `stepspec conform`: numerical warnings from a broken backend's arithmetic are not failures
    # by themselves; the property's assertion decides.
    with _mutation_settings(test), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            test(**kwargs)
        except (AssertionError, StepspecError, BaseExceptionGroup) as exc:
            return exc
    return None


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_mutant_is_killed(mutant):
    if isinstance(mutant, WrapperMutant):
        backend, context = mutant.make_backend(), nullcontext()
    elif mutant.patch_module:
        backend, context = None, patched(mutant)
    else:
        backend, context = mutant_backend(mutant), nullcontext()
    survived = []
    with context:
        for kill in mutant.kills:
            if failure_of(kill, backend) is None:
                survived.append(str(kill))
    assert not survived, f"mutant {mutant.id} survived {survived}"


def test_kill_lists_pass_on_the_reference():
    """A kill counts only if the test fails because of the mutation: under the same settings every
    listed test passes on the pristine reference."""
    kills = {str(kill): kill for mutant in MUTANTS for kill in mutant.kills}
    failing = {name: str(failure_of(kill, PRISTINE.get(kill.test, REFERENCE)))[:300] for name, kill in kills.items()}
    failing = {name: message for name, message in failing.items() if message != "None"}
    assert not failing, f"kill-list tests that fail on the reference itself: {failing}"


def _conformance_tests():
    for info in pkgutil.iter_modules(stepspec.conformance.__path__):
        if info.name.startswith("test_"):
            module = importlib.import_module(f"stepspec.conformance.{info.name}")
            for name, obj in vars(module).items():
                if name.startswith("test_") and callable(obj):
                    yield f"{info.name}.py::{name}"


def test_every_property_has_a_mutant_that_kills_it():
    killed = {kill.test for mutant in MUTANTS for kill in mutant.kills}
    missing = sorted(set(_conformance_tests()) - killed)
    assert not missing, f"conformance tests no mutant kills: {missing}"
