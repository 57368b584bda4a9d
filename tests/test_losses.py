"""Losses against values computed by hand, under jit, and their gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util

from lwf_jax import losses

STUDENT = jnp.array([[0.0, 1.0, 2.0]])
RECORDED = jnp.array([[2.0, 1.0, 0.0]])
# softmax([1, .5, 0]) and softmax([0, .5, 1]), the T = 2 distributions above.
P_RECORDED = np.array([0.50648039, 0.30719589, 0.18632372])
P_STUDENT = P_RECORDED[::-1]


class TestCrossEntropy:
  @pytest.mark.parametrize("compiled", [False, True])
  def test_hand_computed(self, compiled):
    fn = jax.jit(losses.cross_entropy) if compiled else losses.cross_entropy
    logits = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    # -log softmax: log(1 + e^-1 + e^-2) for label 2; log 3 for uniform logits.
    np.testing.assert_allclose(
      fn(logits, jnp.array([2, 0])), [0.40760596, 1.09861229], rtol=1e-6
    )

  @pytest.mark.parametrize("compiled", [False, True])
  def test_exact_for_extreme_logits(self, compiled):
    fn = jax.jit(losses.cross_entropy) if compiled else losses.cross_entropy
    logits = jnp.array([[1e8, 1e8], [1e8, -1e8], [-1e8, 1e8]], jnp.float32)
    value = fn(logits, jnp.array([1, 0, 0]))
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, [0.6931472, 0.0, 2e8], rtol=1e-7)

  def test_gradient_is_softmax_minus_one_hot(self):
    logits = jnp.array([[1.0, 2.0, 3.0]])
    grad = jax.grad(lambda z: losses.cross_entropy(z, jnp.array([0])).sum())(logits)
    np.testing.assert_allclose(
      grad, jax.nn.softmax(logits) - jnp.array([[1.0, 0, 0]]), atol=1e-7
    )
    test_util.check_grads(
      lambda z: losses.cross_entropy(z, jnp.array([0])), (logits,), order=2
    )

  def test_where_masks_examples(self):
    logits = jnp.array([[1.0, 2.0], [3.0, 0.0]])
    value = losses.cross_entropy(logits, jnp.array([0, 1]), where=jnp.array([1, 0]))
    np.testing.assert_allclose(value, [np.log1p(np.e), 0.0], rtol=1e-6)


class TestDistillationLoss:
  @pytest.mark.parametrize("compiled", [False, True])
  def test_hand_computed(self, compiled):
    fn = jax.jit(losses.distillation_loss) if compiled else losses.distillation_loss
    value = fn(STUDENT, RECORDED)  # T = 2 by default
    np.testing.assert_allclose(value, [1.34034800], rtol=1e-6)
    np.testing.assert_allclose(value, [-(P_RECORDED * np.log(P_STUDENT)).sum()])

  def test_is_the_papers_renormalised_power(self):
    # Eq. 4 of the paper: y'_i = y_i^(1/T) / sum_j y_j^(1/T), on probabilities.
    rng = np.random.default_rng(0)
    student, recorded = rng.normal(size=(2, 5, 7)) * 3
    temperature = 2.0
    y = np.exp(recorded) / np.exp(recorded).sum(-1, keepdims=True)
    y_hat = np.exp(student) / np.exp(student).sum(-1, keepdims=True)
    target = y ** (1 / temperature) / (y ** (1 / temperature)).sum(-1, keepdims=True)
    current = y_hat ** (1 / temperature)
    current /= current.sum(-1, keepdims=True)
    expected = -(target * np.log(current)).sum(-1)
    value = losses.distillation_loss(
      jnp.asarray(student, jnp.float32),
      jnp.asarray(recorded, jnp.float32),
      temperature=temperature,
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)

  @pytest.mark.parametrize("compiled", [False, True])
  def test_gradient_reaches_student_not_recording(self, compiled):
    grad_fn = jax.grad(
      lambda s, r: losses.distillation_loss(s, r, temperature=2.0).sum(),
      argnums=(0, 1),
    )
    grad_fn = jax.jit(grad_fn) if compiled else grad_fn
    student_grad, recorded_grad = grad_fn(STUDENT, RECORDED)
    np.testing.assert_allclose(
      student_grad, [[-0.16007833, 0.0, 0.16007833]], rtol=1e-6, atol=1e-7
    )
    np.testing.assert_array_equal(recorded_grad, jnp.zeros_like(RECORDED))

  def test_numerical_gradient(self):
    test_util.check_grads(
      lambda s: losses.distillation_loss(s, RECORDED, temperature=3.0),
      (STUDENT,),
      order=2,
      modes=["rev"],
    )

  @pytest.mark.parametrize("compiled", [False, True])
  def test_finite_when_recorded_probability_is_zero_or_one(self, compiled):
    fn = jax.jit(losses.distillation_loss, static_argnames="temperature")
    fn = fn if compiled else losses.distillation_loss
    recorded = jnp.array([[1e4, 0.0], [0.0, -jnp.inf]])
    student = jnp.zeros((2, 2))
    value, grad = jax.value_and_grad(lambda s: fn(s, recorded, temperature=1.0).sum())(
      student
    )
    np.testing.assert_allclose(
      fn(student, recorded, temperature=1.0), [np.log(2), np.log(2)], rtol=1e-6
    )
    assert np.isfinite(value) and np.isfinite(grad).all()
    np.testing.assert_allclose(grad, [[-0.5, 0.5], [-0.5, 0.5]], atol=1e-7)

  def test_temperature_squared_scaling(self):
    plain = losses.distillation_loss(STUDENT, RECORDED, temperature=3.0)
    scaled = losses.distillation_loss(
      STUDENT, RECORDED, temperature=3.0, scale_by_temperature_squared=True
    )
    np.testing.assert_allclose(scaled, 9.0 * plain, rtol=1e-6)

  def test_where_masks_examples(self):
    value = losses.distillation_loss(
      jnp.concatenate([STUDENT, STUDENT]),
      jnp.concatenate([RECORDED, RECORDED]),
      where=jnp.array([False, True]),
    )
    np.testing.assert_allclose(value, [0.0, 1.34034800], rtol=1e-6)


class TestDistillationKL:
  @pytest.mark.parametrize("compiled", [False, True])
  def test_hand_computed(self, compiled):
    fn = jax.jit(losses.distillation_kl) if compiled else losses.distillation_kl
    np.testing.assert_allclose(fn(STUDENT, RECORDED), [0.32015667], rtol=1e-6)

  def test_is_cross_entropy_minus_target_entropy(self):
    entropy = -(P_RECORDED * np.log(P_RECORDED)).sum()
    np.testing.assert_allclose(
      losses.distillation_kl(STUDENT, RECORDED),
      losses.distillation_loss(STUDENT, RECORDED) - entropy,
      rtol=1e-6,
    )

  def test_zero_when_outputs_match_and_same_gradient(self):
    np.testing.assert_allclose(losses.distillation_kl(RECORDED, RECORDED), [0.0])
    kl_grad = jax.grad(lambda s: losses.distillation_kl(s, RECORDED).sum())(STUDENT)
    ce_grad = jax.grad(lambda s: losses.distillation_loss(s, RECORDED).sum())(STUDENT)
    np.testing.assert_allclose(kl_grad, ce_grad, atol=1e-7)

  def test_finite_when_recorded_probability_is_zero(self):
    recorded = jnp.array([[0.0, -jnp.inf], [1e4, 0.0]])
    value, grad = jax.value_and_grad(
      lambda s: losses.distillation_kl(s, recorded, temperature=1.0).sum()
    )(jnp.zeros((2, 2)))
    np.testing.assert_allclose(value, 2 * np.log(2), rtol=1e-6)
    assert np.isfinite(grad).all()


class TestLwfObjective:
  def test_hand_computed(self):
    new_logits = jnp.array([[1.0, 2.0, 3.0]])
    value = losses.lwf_objective(
      new_logits,
      jnp.array([2]),
      {"a": STUDENT, "b": RECORDED},
      {"a": RECORDED, "b": RECORDED},
      lambda_old=0.5,
    )
    # cross-entropy + 0.5 * (1.34034800 + entropy of softmax([1, .5, 0])).
    entropy = -(P_RECORDED * np.log(P_RECORDED)).sum()
    np.testing.assert_allclose(
      value, [0.40760596 + 0.5 * (1.34034800 + entropy)], rtol=1e-6
    )

  def test_without_old_heads_is_cross_entropy(self):
    new_logits, labels = jnp.array([[1.0, 2.0, 3.0]]), jnp.array([2])
    np.testing.assert_allclose(
      losses.lwf_objective(new_logits, labels, {}, {}),
      losses.cross_entropy(new_logits, labels),
    )

  @pytest.mark.parametrize("compiled", [False, True])
  def test_each_head_normalised_over_its_own_classes(self, compiled):
    def old_part(new_logits, old_logits):
      total = losses.lwf_objective(
        new_logits, jnp.array([0]), {"old": old_logits}, {"old": RECORDED}
      )
      return (total - losses.cross_entropy(new_logits, jnp.array([0]))).sum()

    old_part = jax.jit(old_part) if compiled else old_part
    base = old_part(jnp.array([[0.0, 0.0]]), STUDENT)
    changed = old_part(jnp.array([[50.0, -50.0]]), STUDENT)
    np.testing.assert_allclose(base, changed, rtol=1e-6)
    np.testing.assert_allclose(base, 1.34034800, rtol=1e-6)
    new_grad = jax.grad(old_part)(jnp.array([[3.0, 1.0]]), STUDENT)
    np.testing.assert_allclose(new_grad, 0.0, atol=1e-6)

  def test_gradients_per_term(self):
    def objective(new_logits, old_logits, recorded):
      return losses.lwf_objective(
        new_logits, jnp.array([1]), {"o": old_logits}, {"o": recorded}, lambda_old=2.0
      ).sum()

    new_logits = jnp.array([[0.0, 0.0]])
    grads = jax.grad(objective, argnums=(0, 1, 2))(new_logits, STUDENT, RECORDED)
    np.testing.assert_allclose(grads[0], [[0.5, -0.5]], atol=1e-7)
    np.testing.assert_allclose(
      grads[1], 2.0 * np.array([[-0.16007833, 0.0, 0.16007833]]), atol=1e-6
    )
    np.testing.assert_array_equal(grads[2], 0.0)

  def test_mismatched_heads_or_shapes_raise(self):
    with pytest.raises(ValueError, match="differ"):
      losses.lwf_objective(STUDENT, jnp.array([0]), {"a": STUDENT}, {"b": RECORDED})
    with pytest.raises(ValueError, match="shape"):
      losses.lwf_objective(
        STUDENT, jnp.array([0]), {"a": STUDENT}, {"a": jnp.zeros((1, 4))}
      )
