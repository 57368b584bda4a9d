"""Losses against values computed by hand, under jit, and their gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util

from lwf_jax import losses

# Every loss between current and recorded logits of one old head.
DISTILLATION_LOSSES = [
  losses.distillation_loss,
  losses.distillation_kl,
  losses.binary_distillation_loss,
  losses.binary_distillation_kl,
]

STUDENT = jnp.array([[0.0, 1.0, 2.0]])
RECORDED = jnp.array([[2.0, 1.0, 0.0]])
# softmax([1, .5, 0]) and softmax([0, .5, 1]), the T = 2 distributions above.
P_RECORDED = np.array([0.50648039, 0.30719589, 0.18632372])
P_STUDENT = P_RECORDED[::-1]
# A multi-label head of three labels; at T = 2 the recorded label probabilities are
# sigmoid(1), 1/2 and 0, the current ones 1/2, sigmoid(1) and sigmoid(-1).
BINARY_STUDENT = jnp.array([[0.0, 2.0, -2.0]])
BINARY_RECORDED = jnp.array([[2.0, 0.0, -jnp.inf]])
# ln 2 + (softplus(-1) + softplus(1)) / 2 + softplus(-1).
BINARY_LOSS = 1.81967056
SIGMOID_1 = 0.73105858


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

  def test_non_finite_logits_give_non_finite_losses(self):
    # Training detects divergence by the loss: NaN must never come out finite.
    logits = jnp.array([[jnp.nan, 0.0, 0.0], [0.0, jnp.nan, 1.0], [jnp.inf, 0.0, 0.0]])
    assert not np.isfinite(losses.cross_entropy(logits, jnp.array([1, 2, 1]))).any()
    assert not np.isfinite(losses.distillation_loss(logits, jnp.zeros((3, 3)))).any()

  def test_exact_for_small_losses(self):
    # log(1 + e^-30) = 9.357623e-14, which log(sum(exp(z))) - z_y rounds to 0.
    value = losses.cross_entropy(jnp.array([[0.0, 30.0]]), jnp.array([1]))
    np.testing.assert_allclose(value, [9.357623e-14], rtol=1e-6)

  @pytest.mark.parametrize("compiled", [False, True])
  def test_gradient_is_softmax_minus_one_hot_everywhere(self, compiled):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 5)) * rng.choice([0.1, 3.0, 50.0], size=(64, 1))
    logits[:8] = np.round(logits[:8])  # ties, including with the label's logit
    logits[8:12] = 0.0
    labels = rng.integers(0, 5, size=64)
    fn = lambda z: losses.cross_entropy(z, labels).sum()
    grad = (jax.jit(jax.grad(fn)) if compiled else jax.grad(fn))(
      jnp.asarray(logits, jnp.float32)
    )
    expected = jax.nn.softmax(jnp.asarray(logits)) - jax.nn.one_hot(labels, 5)
    np.testing.assert_allclose(grad, expected, atol=2e-6)
    value = losses.cross_entropy(jnp.asarray(logits, jnp.float32), labels)
    reference = -jax.nn.log_softmax(np.asarray(logits, np.float64))[
      np.arange(64), labels
    ]
    np.testing.assert_allclose(value, reference, rtol=2e-6, atol=1e-7)

  def test_gradient_is_softmax_minus_one_hot(self):
    logits = jnp.array([[1.0, 2.0, 3.0]])
    grad = jax.grad(lambda z: losses.cross_entropy(z, jnp.array([0])).sum())(logits)
    np.testing.assert_allclose(
      grad, jax.nn.softmax(logits) - jnp.array([[1.0, 0, 0]]), atol=1e-7
    )
    test_util.check_grads(
      lambda z: losses.cross_entropy(z, jnp.array([0])), (logits,), order=1
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


class TestBinaryCrossEntropy:
  @pytest.mark.parametrize("compiled", [False, True])
  @pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.float32])
  def test_hand_computed(self, compiled, dtype):
    fn = (
      jax.jit(losses.binary_cross_entropy) if compiled else losses.binary_cross_entropy
    )
    logits = jnp.array([[0.0, 2.0, -1.0], [1.0, -3.0, 0.5]])
    labels = jnp.array([[1, 0, 0], [1, 1, 0]], dtype)
    # Summed over labels, -log sigmoid(z) for a 1 and softplus(z) for a 0:
    # ln 2 + softplus(2) + softplus(-1); softplus(-1) + softplus(3) + softplus(.5).
    value = fn(logits, labels)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, [3.13333688, 4.33592602], rtol=1e-6)

  @pytest.mark.parametrize("compiled", [False, True])
  def test_finite_for_extreme_logits(self, compiled):
    fn = (
      jax.jit(losses.binary_cross_entropy) if compiled else losses.binary_cross_entropy
    )
    logits = jnp.array([[1e4, -1e4], [1e4, -1e4]])
    value, grad = jax.value_and_grad(
      lambda z: fn(z, jnp.array([[1, 0], [0, 1]])).sum()
    )(logits)
    np.testing.assert_allclose(fn(logits, jnp.array([[1, 0], [0, 1]])), [0.0, 2e4])
    assert np.isfinite(value) and np.isfinite(grad).all()
    np.testing.assert_allclose(grad, [[0.0, 0.0], [1.0, -1.0]])

  def test_exact_for_small_losses(self):
    # log(1 + e^-30) = 9.357623e-14 per label, where 1 - sigmoid(30) rounds to 0.
    value = losses.binary_cross_entropy(
      jnp.array([[30.0], [-30.0]]), jnp.array([[1], [0]])
    )
    np.testing.assert_allclose(value, [9.357623e-14, 9.357623e-14], rtol=1e-6)

  def test_non_finite_logits_give_non_finite_losses(self):
    logits = jnp.array([[jnp.nan, 0.0], [0.0, jnp.nan], [jnp.inf, 0.0]])
    labels = jnp.array([[1, 0], [0, 0], [0, 1]])
    assert not np.isfinite(losses.binary_cross_entropy(logits, labels)).any()

  @pytest.mark.parametrize("compiled", [False, True])
  def test_gradient_is_sigmoid_minus_labels(self, compiled):
    logits = jnp.array([[0.0, 2.0, -1.0], [1.0, -3.0, 0.5]])
    labels = jnp.array([[1, 0, 0], [1, 1, 0]])
    grad_fn = jax.grad(lambda z: losses.binary_cross_entropy(z, labels).sum())
    grad = (jax.jit(grad_fn) if compiled else grad_fn)(logits)
    np.testing.assert_allclose(grad, jax.nn.sigmoid(logits) - labels, atol=1e-7)
    test_util.check_grads(
      lambda z: losses.binary_cross_entropy(z, labels), (logits,), order=2
    )

  def test_where_masks_examples(self):
    logits = jnp.array([[0.0, 0.0], [jnp.nan, jnp.inf]])
    labels = jnp.array([[1, 0], [7, -1]])  # not multi-hot, in a masked row
    where = jnp.array([True, False])
    value, grad = jax.value_and_grad(
      lambda z: losses.binary_cross_entropy(z, labels, where=where).sum()
    )(logits)
    np.testing.assert_allclose(
      losses.binary_cross_entropy(logits, labels, where=where), [2 * np.log(2), 0.0]
    )
    assert np.isfinite(value) and np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[1], 0.0)


class TestBinaryDistillationLoss:
  @pytest.mark.parametrize("compiled", [False, True])
  def test_hand_computed(self, compiled):
    fn = losses.binary_distillation_loss
    fn = jax.jit(fn) if compiled else fn  # T = 2 by default
    value = fn(BINARY_STUDENT, BINARY_RECORDED)
    np.testing.assert_allclose(value, [BINARY_LOSS], rtol=1e-6)

  @pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
  @pytest.mark.parametrize("scale", [False, True])
  def test_is_two_class_distillation_per_label(self, temperature, scale):
    # Each label is the softmax over [z_k, 0]: distillation_loss label by label.
    rng = np.random.default_rng(0)
    student, recorded = rng.normal(size=(2, 5, 7)) * 3
    # Not +inf: softmax([inf, 0]) is NaN, which distillation_loss counts as 0.
    recorded[0, :3] = [1e4, -1e4, -np.inf]
    student, recorded = jnp.asarray(student), jnp.asarray(recorded)
    kwargs = {"temperature": temperature, "scale_by_temperature_squared": scale}
    as_pairs = lambda x: jnp.stack([x, jnp.zeros_like(x)], axis=-1).reshape(-1, 2)
    two_class = losses.distillation_loss(
      as_pairs(student), as_pairs(recorded), **kwargs
    )
    np.testing.assert_allclose(
      losses.binary_distillation_loss(student, recorded, **kwargs),
      two_class.reshape(5, 7).sum(-1),
      rtol=1e-6,
    )

  @pytest.mark.parametrize("compiled", [False, True])
  def test_gradient_reaches_student_not_recording(self, compiled):
    grad_fn = jax.grad(
      lambda s, r: losses.binary_distillation_loss(s, r).sum(), argnums=(0, 1)
    )
    grad_fn = jax.jit(grad_fn) if compiled else grad_fn
    student_grad, recorded_grad = grad_fn(BINARY_STUDENT, BINARY_RECORDED)
    # (sigmoid(z/T) - sigmoid(r/T)) / T with T = 2.
    expected = [[(0.5 - SIGMOID_1) / 2, (SIGMOID_1 - 0.5) / 2, (1 - SIGMOID_1) / 2]]
    np.testing.assert_allclose(student_grad, expected, rtol=1e-6)
    np.testing.assert_array_equal(recorded_grad, 0.0)

  def test_numerical_gradient(self):
    test_util.check_grads(
      lambda s: losses.binary_distillation_loss(s, BINARY_RECORDED, temperature=3.0),
      (BINARY_STUDENT,),
      order=2,
      modes=["rev"],
      # float32 differences at the default step are off by 3% on losses near 2.
      eps=1e-2,
    )

  @pytest.mark.parametrize("compiled", [False, True])
  def test_finite_when_recorded_probability_is_zero_or_one(self, compiled):
    fn = jax.jit(losses.binary_distillation_loss, static_argnames="temperature")
    fn = fn if compiled else losses.binary_distillation_loss
    recorded = jnp.array([[1e4, -1e4, jnp.inf, -jnp.inf]])
    student = jnp.zeros((1, 4))
    value, grad = jax.value_and_grad(lambda s: fn(s, recorded, temperature=1.0).sum())(
      student
    )
    np.testing.assert_allclose(value, 4 * np.log(2), rtol=1e-6)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, [[-0.5, 0.5, -0.5, 0.5]], atol=1e-7)

  def test_temperature_squared_scaling(self):
    plain = losses.binary_distillation_loss(
      BINARY_STUDENT, BINARY_RECORDED, temperature=3.0
    )
    scaled = losses.binary_distillation_loss(
      BINARY_STUDENT,
      BINARY_RECORDED,
      temperature=3.0,
      scale_by_temperature_squared=True,
    )
    np.testing.assert_allclose(scaled, 9.0 * plain, rtol=1e-6)


class TestBinaryDistillationKL:
  @pytest.mark.parametrize("compiled", [False, True])
  def test_hand_computed(self, compiled):
    fn = losses.binary_distillation_kl
    fn = jax.jit(fn) if compiled else fn
    # The loss minus the entropies of Bernoulli(sigmoid(1)), Bernoulli(1/2) and of a
    # certain label: 1.81967056 - 0.58220311 - ln 2.
    np.testing.assert_allclose(
      fn(BINARY_STUDENT, BINARY_RECORDED), [0.54432027], rtol=1e-5
    )

  def test_is_cross_entropy_minus_target_entropy(self):
    rng = np.random.default_rng(2)
    student, recorded = jnp.asarray(rng.normal(size=(2, 4, 6)) * 3, jnp.float32)
    p = np.asarray(jax.nn.sigmoid(recorded / 2.0), np.float64)
    entropy = -(p * np.log(p) + (1 - p) * np.log1p(-p)).sum(-1)
    np.testing.assert_allclose(
      losses.binary_distillation_kl(student, recorded),
      losses.binary_distillation_loss(student, recorded) - entropy,
      rtol=1e-5,
      atol=1e-6,
    )

  def test_zero_when_outputs_match_and_same_gradient(self):
    recorded = jnp.array([[3.0, -1.0, 1e4, -jnp.inf]])
    np.testing.assert_array_equal(losses.binary_distillation_kl(recorded, recorded), 0)
    student = jnp.array([[0.0, 1.0, 2.0, -3.0]])
    kl_grad, ce_grad = (
      jax.grad(lambda s, fn=fn: fn(s, recorded).sum())(student)
      for fn in (losses.binary_distillation_kl, losses.binary_distillation_loss)
    )
    assert np.isfinite(kl_grad).all()
    np.testing.assert_allclose(kl_grad, ce_grad, atol=1e-7)

  def test_finite_when_recorded_probability_is_zero_or_one(self):
    recorded = jnp.array([[1e4, -1e4, jnp.inf, -jnp.inf]])
    value, grad = jax.value_and_grad(
      lambda s: losses.binary_distillation_kl(s, recorded, temperature=1.0).sum()
    )(jnp.zeros((1, 4)))
    np.testing.assert_allclose(value, 4 * np.log(2), rtol=1e-6)
    assert np.isfinite(grad).all()

  def test_never_negative(self):
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(256, 10)) * 20)
    assert float(losses.binary_distillation_kl(logits, logits).min()) >= 0.0


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

  def test_defaults_are_softmax_losses(self):
    new_logits, labels = jnp.array([[1.0, 2.0, 3.0]]), jnp.array([2])
    value = losses.lwf_objective(new_logits, labels, {"a": STUDENT}, {"a": RECORDED})
    np.testing.assert_array_equal(
      value,
      losses.cross_entropy(new_logits, labels)
      + losses.distillation_loss(STUDENT, RECORDED),
    )

  @pytest.mark.parametrize("compiled", [False, True])
  def test_multi_label_new_task(self, compiled):
    def objective(new_logits, labels):
      return losses.lwf_objective(
        new_logits, labels, {"a": STUDENT}, {"a": RECORDED}, multi_label=True
      )

    objective = jax.jit(objective) if compiled else objective
    new_logits = jnp.array([[0.0, 2.0, -1.0]])
    # binary_cross_entropy's first row, 3.13333688, plus the softmax head's loss.
    value = objective(new_logits, jnp.array([[1, 0, 0]]))
    np.testing.assert_allclose(value, [3.13333688 + 1.34034800], rtol=1e-6)
    grad = jax.grad(lambda z: objective(z, jnp.array([[1, 0, 0]])).sum())(new_logits)
    np.testing.assert_allclose(
      grad, jax.nn.sigmoid(new_logits) - jnp.array([[1, 0, 0]]), atol=1e-7
    )

  @pytest.mark.parametrize("compiled", [False, True])
  def test_binary_heads_are_distilled_label_by_label(self, compiled):
    def objective(new_logits, voc_logits):
      return losses.lwf_objective(
        new_logits,
        jnp.array([0]),
        {"voc": voc_logits, "imagenet": STUDENT},
        {"voc": BINARY_RECORDED, "imagenet": RECORDED},
        lambda_old=0.5,
        # Names of heads that are not old here (the new task's) are ignored.
        binary_heads=("voc", "new"),
      ).sum()

    objective = jax.jit(objective) if compiled else objective
    new_logits = jnp.array([[0.0, 0.0]])
    value, grad = jax.value_and_grad(objective, argnums=1)(new_logits, BINARY_STUDENT)
    np.testing.assert_allclose(
      value, np.log(2) + 0.5 * (BINARY_LOSS + 1.34034800), rtol=1e-6
    )
    expected = [[(0.5 - SIGMOID_1) / 2, (SIGMOID_1 - 0.5) / 2, (1 - SIGMOID_1) / 2]]
    np.testing.assert_allclose(grad, 0.5 * np.array(expected), rtol=1e-6)

  def test_binary_heads_must_be_a_collection_of_names(self):
    with pytest.raises(ValueError, match="collection of names"):
      losses.lwf_objective(
        STUDENT, jnp.array([0]), {"voc": STUDENT}, {"voc": RECORDED}, binary_heads="voc"
      )

  def test_mismatched_heads_or_shapes_raise(self):
    with pytest.raises(ValueError, match="differ"):
      losses.lwf_objective(STUDENT, jnp.array([0]), {"a": STUDENT}, {"b": RECORDED})
    with pytest.raises(ValueError, match="shape"):
      losses.lwf_objective(
        STUDENT, jnp.array([0]), {"a": STUDENT}, {"a": jnp.zeros((1, 4))}
      )


LOSSES_WITH_RECORDINGS = [
  losses.distillation_loss,
  losses.distillation_kl,
  losses.binary_distillation_loss,
  losses.binary_distillation_kl,
  losses.feature_distance,
]


class TestMasksAndShapes:
  """Every loss: masked rows give 0 and no NaN gradient; bad shapes raise."""

  @pytest.mark.parametrize("fn", LOSSES_WITH_RECORDINGS)
  def test_masked_rows_of_recording_losses(self, fn):
    current = jnp.array([[0.0, 1.0], [jnp.nan, jnp.inf]])
    recorded = jnp.array([[1.0, 0.0], [jnp.nan, -jnp.inf]])
    where = jnp.array([True, False])
    value, grad = jax.value_and_grad(lambda z: fn(z, recorded, where=where).sum())(
      current
    )
    unmasked = fn(current[:1], recorded[:1])
    np.testing.assert_allclose(value, unmasked.sum(), rtol=1e-6)
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[1], 0.0)

  def test_masked_rows_of_cross_entropy_and_objective(self):
    logits = jnp.array([[0.0, 1.0, 2.0], [jnp.nan, 0.0, jnp.inf]])
    labels = jnp.array([1, 7])  # 7 is out of range, in a masked row
    where = jnp.array([True, False])
    for fn in (
      lambda z: losses.cross_entropy(z, labels, where=where),
      lambda z: losses.lwf_objective(z, labels, {"o": z}, {"o": z + 1}, where=where),
    ):
      value, grad = jax.value_and_grad(lambda z, fn=fn: fn(z).sum())(logits)
      assert np.isfinite(value) and np.isfinite(grad).all()
      np.testing.assert_array_equal(grad[1], 0.0)
      assert fn(logits)[1] == 0.0

  def test_masked_rows_of_multi_label_objective(self):
    logits = jnp.array([[0.0, 1.0, 2.0], [jnp.nan, 0.0, jnp.inf]])
    labels = jnp.array([[1, 0, 1], [7, 0, -1]])  # not multi-hot, in a masked row
    where = jnp.array([True, False])
    fn = lambda z: losses.lwf_objective(
      z,
      labels,
      {"o": z},
      {"o": z + 1},
      multi_label=True,
      binary_heads={"o"},
      where=where,
    )
    value, grad = jax.value_and_grad(lambda z: fn(z).sum())(logits)
    assert np.isfinite(value) and np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[1], 0.0)
    assert fn(logits)[1] == 0.0

  @pytest.mark.parametrize(
    "call, message",
    [
      (lambda: losses.cross_entropy(jnp.zeros((3, 2)), jnp.array([1])), "3 rows"),
      (lambda: losses.cross_entropy(jnp.zeros(3), jnp.array([1])), "batch, classes"),
      (
        lambda: losses.cross_entropy(jnp.zeros((2, 2)), jnp.zeros((2, 1), int)),
        "labels must be",
      ),
      (
        lambda: losses.cross_entropy(
          jnp.zeros((2, 2)), jnp.array([0, 1]), where=jnp.ones((2, 1), bool)
        ),
        "where must be",
      ),
      (
        lambda: losses.binary_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2,), int)),
        "multi-hot",
      ),
      (
        lambda: losses.binary_cross_entropy(jnp.zeros(3), jnp.zeros(3, int)),
        "batch, classes",
      ),
      (
        lambda: losses.binary_distillation_loss(jnp.zeros((4, 3)), jnp.zeros((4, 2))),
        "do not match",
      ),
      (
        lambda: losses.binary_distillation_kl(jnp.zeros((4, 3)), jnp.zeros((1, 3))),
        "do not match",
      ),
      (
        lambda: losses.lwf_objective(
          jnp.zeros((2, 3)), jnp.array([0, 1]), {}, {}, multi_label=True
        ),
        "multi-hot",
      ),
      (
        lambda: losses.distillation_loss(jnp.zeros((4, 3)), jnp.zeros((1, 3))),
        "do not match",
      ),
      (
        lambda: losses.distillation_kl(jnp.zeros((4, 3)), jnp.zeros((4, 2))),
        "do not match",
      ),
      (
        lambda: losses.feature_distance(jnp.zeros((4, 3)), jnp.zeros((3,))),
        "do not match",
      ),
      (
        lambda: losses.lwf_objective(
          jnp.zeros((2, 3)),
          jnp.array([0, 1]),
          {"o": jnp.zeros((1, 3))},
          {"o": jnp.zeros((1, 3))},
        ),
        "2 rows",
      ),
    ],
  )
  def test_bad_shapes_raise(self, call, message):
    with pytest.raises(ValueError, match=message):
      call()

  def test_half_precision_inputs_are_computed_in_float32(self):
    student = jnp.array([[100.0, 0.0]], jnp.float16)
    value = losses.distillation_loss(student, student, temperature=1e-3)
    assert value.dtype == jnp.float32 and np.isfinite(value).all()
    ce = losses.cross_entropy(jnp.array([[1.0, 2.0]], jnp.bfloat16), jnp.array([0]))
    assert ce.dtype == jnp.float32
    np.testing.assert_allclose(ce, [1.3132616], rtol=1e-6)

  def test_zero_target_against_minus_infinite_current_logit(self):
    current = jnp.array([[0.0, -jnp.inf]])
    recorded = jnp.array([[0.0, -jnp.inf]])
    value = losses.distillation_loss(current, recorded, temperature=1.0)
    np.testing.assert_allclose(value, [0.0], atol=1e-7)
    assert float(losses.distillation_kl(current, recorded)[0]) == 0.0

  def test_kl_never_negative(self):
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(256, 10)) * 20, jnp.float32)
    assert float(losses.distillation_kl(logits, logits).min()) >= 0.0


class TestBrokenAndInfiniteRecordings:
  """A recording at +inf is the limit of large logits; a NaN one never vanishes."""

  @pytest.mark.parametrize("compiled", [False, True])
  def test_positive_infinity_is_the_limit(self, compiled):
    loss = jax.jit(losses.distillation_loss, static_argnames="temperature")
    loss = loss if compiled else losses.distillation_loss
    current = jnp.array([[0.0, 5.0], [1.0, 2.0]])
    recorded = jnp.array([[jnp.inf, 0.0], [jnp.inf, jnp.inf]])
    # All the mass on class 0: -log softmax([0, 5])_0 = log(1 + e^5); two tied
    # infinities share it: -(log p0 + log p1) / 2 at logits [1, 2].
    expected = [np.log1p(np.exp(5.0)), 0.5 * (np.log1p(np.e) + np.log1p(np.exp(-1)))]
    np.testing.assert_allclose(
      loss(current, recorded, temperature=1.0), expected, rtol=1e-6
    )
    kl = losses.distillation_kl(current, recorded, temperature=1.0)
    np.testing.assert_allclose(kl[0], np.log1p(np.exp(5.0)), rtol=1e-6)
    grad = jax.grad(lambda z: loss(z, recorded, temperature=1.0).sum())(current)
    assert np.isfinite(grad).all()

  @pytest.mark.parametrize("loss", DISTILLATION_LOSSES)
  def test_nan_recording_gives_nan(self, loss):
    recorded = jnp.array([[jnp.nan, 0.0], [1.0, 0.0]])
    values = loss(jnp.zeros((2, 2)), recorded)
    assert np.isnan(values[0]) and np.isfinite(values[1])
