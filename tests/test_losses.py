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


LOSSES_WITH_RECORDINGS = [
  losses.distillation_loss,
  losses.distillation_kl,
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
