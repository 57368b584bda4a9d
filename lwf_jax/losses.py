"""Losses of Learning without Forgetting: pure functions of per-example values.

Every function here takes logits of shape ``[batch, num_classes]`` for one head and
returns a ``[batch]`` array; the caller reduces (mean over the batch, sum over heads).
A head's softmax only ever sees that head's own logits. A multi-label head (PASCAL
VOC) has no softmax: each of its labels is a sigmoid, its own two-way classifier.

References:
  Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017, arXiv:1606.09282.
  Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
"""

import math
from collections.abc import Collection, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def _float(x: ArrayLike) -> jax.Array:
  """At least float32: half-precision logits are upcast, losses are float32."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_logits(logits: jax.Array, name: str = "logits") -> None:
  if logits.ndim != 2:
    raise ValueError(f"{name} must be [batch, classes], got shape {logits.shape}")


def _check_batch(array: jax.Array, batch: int, name: str) -> None:
  if array.shape[:1] != (batch,):
    raise ValueError(f"{name} must have {batch} rows, got shape {array.shape}")


def _concrete(x: Any) -> bool:
  """Whether ``x`` has a value now, outside any trace (only then can it be checked)."""
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def _check_hyperparameter(name: str, value: Any, *, positive: bool) -> None:
  """A finite number, > 0 (``positive``) or >= 0; checked unless traced."""
  if not _concrete(value):
    return
  if isinstance(value, bool | str | bytes) or np.ndim(value) != 0:
    raise ValueError(f"{name} must be a number, got {value!r}")
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number, got {value!r}") from None
  low_ok = number > 0 if positive else number >= 0
  if not (low_ok and math.isfinite(number)):
    raise ValueError(
      f"{name} must be finite and {'>' if positive else '>='} 0, got {value!r}"
    )


def _check_label_values(
  labels: jax.Array, where: jax.Array | None, low: int, high: int, name: str
) -> None:
  """Labels (of the rows ``where`` keeps) in ``[low, high]``; checked unless traced."""
  if not _concrete((labels, where)):
    return
  kept = np.asarray(labels)
  if where is not None:
    kept = kept[np.asarray(where)]
  if kept.size and not ((kept >= low) & (kept <= high)).all():
    raise ValueError(
      f"{name} must be in [{low}, {high}], got values in [{kept.min()}, {kept.max()}]"
    )


def _mask(where: ArrayLike | None, batch: int) -> jax.Array | None:
  if where is None:
    return None
  where = jnp.asarray(where, bool)
  if where.shape != (batch,):
    raise ValueError(f"where must be [{batch}] booleans, got shape {where.shape}")
  return where


def _select_rows(where: jax.Array | None, values: jax.Array, fill=0) -> jax.Array:
  """Rows of ``values`` where ``where`` holds, ``fill`` elsewhere.

  Applied to inputs as well as outputs: a masked row may hold anything (padding,
  NaN, an out-of-range label) and must not reach the gradient as NaN.
  """
  if where is None:
    return values
  return jnp.where(where.reshape(-1, *[1] * (values.ndim - 1)), values, fill)


def _weighted(weights: jax.Array, log_probs: jax.Array) -> jax.Array:
  """``weights * log_probs``, with 0 where a weight is 0 even against ``log 0``.

  A NaN weight stays NaN: a broken recording must show in the loss, never vanish.
  """
  return jnp.where(weights == 0, 0.0, weights * log_probs)


def _limit_at_infinity(logits: jax.Array) -> jax.Array:
  """Logits whose softmax is the limit where a row holds ``+inf``: uniform over
  its ``+inf`` entries (the softmax of the raw row is NaN there)."""
  infinite = jnp.isposinf(logits)
  limit = jnp.where(infinite, 0.0, -jnp.inf)
  return jnp.where(infinite.any(axis=-1, keepdims=True), limit, logits)


def _pair(
  current: ArrayLike, recorded: ArrayLike, where: ArrayLike | None, name="logits"
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """Checked, masked current values and recorded values without gradient."""
  current, recorded = _float(current), jax.lax.stop_gradient(_float(recorded))
  _check_logits(current, name)
  if recorded.shape != current.shape:
    raise ValueError(
      f"recorded {name} of shape {recorded.shape} do not match the current "
      f"{name} of shape {current.shape}"
    )
  where = _mask(where, current.shape[0])
  return _select_rows(where, current), _select_rows(where, recorded), where


def cross_entropy(
  logits: ArrayLike, labels: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
  r"""Softmax cross-entropy with integer labels, exact for extreme logits.

  .. math:: \ell = \log \sum_j \exp(z_j - z_y)

  computed from the differences ``d = z - z_y``, never from ``logsumexp(z) - z_y``,
  which loses the value to rounding (logits ``[1e8, 1e8]`` give ln 2, not 0); and
  as ``log1p`` of the other classes' terms when the label's logit is the largest,
  so a small loss stays exact (logits ``[0, 30]``, label 1: ``9.36e-14``, not 0).

  Args:
    logits: ``[batch, num_classes]`` finite unnormalised scores of one head.
    labels: ``[batch]`` integers in ``[0, num_classes)``; checked when called
      outside a trace (XLA cannot raise), so validate them before training
      (``lwf_jax.tasks`` does).
    where: optional ``[batch]`` booleans; masked-out examples give 0 and no
      gradient, whatever their logits and labels.

  Returns:
    ``[batch]`` losses.

  >>> import jax.numpy as jnp
  >>> print(cross_entropy(jnp.array([[1e8, 1e8]]), jnp.array([1])))
  [0.6931472]
  """
  logits, labels = _float(logits), jnp.asarray(labels)
  _check_logits(logits)
  _check_batch(labels, logits.shape[0], "labels")
  if labels.ndim != 1:
    raise ValueError(f"labels must be [batch], got shape {labels.shape}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got {labels.dtype}")
  where = _mask(where, logits.shape[0])
  _check_label_values(labels, where, 0, logits.shape[-1] - 1, "labels")
  logits, labels = _select_rows(where, logits), _select_rows(where, labels)
  differences = logits - jnp.take_along_axis(logits, labels[:, None], axis=-1)
  is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  # The value does not depend on the shift, so neither does the gradient.
  largest = jax.lax.stop_gradient(jnp.max(differences, axis=-1))
  shifted = jnp.exp(differences - largest[:, None])
  general = largest + jnp.log(
    jnp.sum(jnp.where(is_label, 0.0, shifted), axis=-1) + jnp.exp(-largest)
  )
  # Where the label's logit is the largest, all differences are <= 0; clearing
  # positive ones only keeps the unused branch finite. (jnp.minimum would halve the
  # gradient at a tie; testing ``<= 0`` would turn NaN into a finite loss.)
  others = jnp.exp(jnp.where(differences > 0, 0.0, differences))
  small = jnp.log1p(jnp.sum(jnp.where(is_label, 0.0, others), axis=-1))
  loss = jnp.where(largest > 0, general, small)
  return _select_rows(where, loss, 0.0)


def _sigmoid_cross_entropy(
  logits: jax.Array, targets: jax.Array, complements: jax.Array
) -> jax.Array:
  """``-sum_k [t_k log sigmoid(z_k) + c_k log sigmoid(-z_k)]``, over the last axis."""
  return -jnp.sum(
    _weighted(targets, jax.nn.log_sigmoid(logits))
    + _weighted(complements, jax.nn.log_sigmoid(-logits)),
    axis=-1,
  )


def binary_cross_entropy(
  logits: ArrayLike, labels: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
  r"""Sigmoid cross-entropy of a multi-label head, summed over its labels.

  .. math:: \ell = -\sum_k \big[ y_k \log \sigma(z_k)
     + (1 - y_k) \log (1 - \sigma(z_k)) \big]

  with :math:`\log(1 - \sigma(z)) = \log \sigma(-z)`, both from
  ``jax.nn.log_sigmoid``: finite for ``|z| = 1e4`` and exact for small losses
  (``z = 30``, ``y = 1``: ``9.36e-14``, not 0). Summed over the labels, not averaged:
  Caffe's ``SigmoidCrossEntropyLoss``, which the paper's VOC experiments use,
  normalises by the batch only, and the caller takes that mean.

  Args:
    logits: ``[batch, num_labels]`` unnormalised scores of one multi-label head.
    labels: ``[batch, num_labels]`` targets in ``[0, 1]`` (multi-hot), of any
      numeric dtype; checked when called outside a trace.
    where: optional ``[batch]`` booleans; masked-out examples give 0 and no
      gradient, whatever their logits and labels.

  Returns:
    ``[batch]`` losses.

  >>> import jax.numpy as jnp
  >>> print(binary_cross_entropy(jnp.array([[0.0, -1e4]]), jnp.array([[1, 0]])))
  [0.6931472]

  References:
    Li & Hoiem 2017, Sec. 3 (multi-label old and new tasks).
  """
  logits, labels = _float(logits), _float(labels)
  _check_logits(logits)
  if labels.shape != logits.shape:
    raise ValueError(
      f"labels must be multi-hot of the logits' shape {logits.shape}, got shape "
      f"{labels.shape}"
    )
  where = _mask(where, logits.shape[0])
  _check_label_values(labels, where, 0, 1, "multi-hot labels")
  logits, labels = _select_rows(where, logits), _select_rows(where, labels)
  return _select_rows(where, _sigmoid_cross_entropy(logits, labels, 1 - labels), 0.0)


def distillation_loss(
  logits: ArrayLike,
  recorded_logits: ArrayLike,
  *,
  temperature: float = 2.0,
  scale_by_temperature_squared: bool = False,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""LwF's knowledge-distillation loss :math:`\mathcal{L}_{old}` for one old head.

  .. math:: \mathcal{L}_{old} = -\sum_i \mathrm{softmax}(r / T)_i \,
     \log \mathrm{softmax}(z / T)_i

  with ``r`` the recorded logits of the old network and ``z`` the current ones.
  This is the paper's Eq. 2-4: it raises the recorded probabilities
  ``y = softmax(r)`` to the power ``1/T`` and renormalises them, and
  ``y**(1/T) / sum(y**(1/T)) = softmax(r / T)`` exactly, so recorded *logits* carry
  all the information and avoid ``log 0`` where a probability rounds to 0 or 1.
  The gradient with respect to ``z`` is ``(softmax(z/T) - softmax(r/T)) / T``; no
  gradient reaches the recorded logits. As in the paper, no ``T**2`` factor is
  applied unless ``scale_by_temperature_squared`` is set (Hinton et al.'s scaling,
  which keeps gradient magnitudes comparable across temperatures).

  Args:
    logits: ``[batch, num_classes]`` current logits of one old head.
    recorded_logits: ``[batch, num_classes]`` that head's logits recorded from the
      old network on the same examples; ``-inf`` is a probability of 0, ``+inf``
      takes the limit (all the mass on the row's ``+inf`` classes), and NaN gives
      a NaN loss.
    temperature: ``T > 0``; the paper uses 2.
    scale_by_temperature_squared: multiply the loss by ``T**2``.
    where: optional ``[batch]`` booleans; masked-out examples give 0.

  Returns:
    ``[batch]`` losses.

  >>> import jax.numpy as jnp
  >>> print(distillation_loss(jnp.array([[0.0, 0.0]]), jnp.array([[1e4, 0.0]]),
  ...                         temperature=1.0))
  [0.6931472]

  References:
    Li & Hoiem 2017, Eq. 2-4; Hinton et al. 2015.
  """
  _check_hyperparameter("temperature", temperature, positive=True)
  logits, recorded_logits, where = _pair(logits, recorded_logits, where)
  targets = jax.nn.softmax(_limit_at_infinity(recorded_logits) / temperature)
  log_probs = jax.nn.log_softmax(logits / temperature)
  # A target of exactly 0 contributes 0 even where the current log-probability is
  # -inf (0 * log 0 := 0), never NaN.
  loss = -jnp.sum(_weighted(targets, log_probs), axis=-1)
  if scale_by_temperature_squared:
    loss = loss * temperature**2
  return _select_rows(where, loss, 0.0)


def distillation_kl(
  logits: ArrayLike,
  recorded_logits: ArrayLike,
  *,
  temperature: float = 2.0,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""KL divergence from the recorded to the current tempered distribution.

  .. math:: \mathrm{KL}\big(\mathrm{softmax}(r/T) \,\|\, \mathrm{softmax}(z/T)\big)

  It equals :func:`distillation_loss` minus the recorded distribution's entropy, a
  constant for the student: the same gradient, but 0 exactly when the current head
  reproduces the recorded outputs, which makes it the readable measure of drift.

  Args:
    logits: ``[batch, num_classes]`` current logits of one old head.
    recorded_logits: ``[batch, num_classes]`` recorded logits of that head.
    temperature: ``T > 0``.
    where: optional ``[batch]`` booleans; masked-out examples give 0.

  Returns:
    ``[batch]`` divergences, ``>= 0``.
  """
  _check_hyperparameter("temperature", temperature, positive=True)
  logits, recorded_logits, where = _pair(logits, recorded_logits, where)
  log_targets = jax.nn.log_softmax(_limit_at_infinity(recorded_logits) / temperature)
  log_probs = jax.nn.log_softmax(logits / temperature)
  targets = jnp.exp(log_targets)
  # A recorded probability of exactly 0 contributes 0 (0 * log 0 := 0), never NaN.
  terms = _weighted(targets, log_targets - log_probs)
  # Rounding can leave a divergence of exactly matching outputs at -1e-12.
  kl = jnp.maximum(jnp.sum(terms, axis=-1), 0.0)
  return _select_rows(where, kl, 0.0)


def binary_distillation_loss(
  logits: ArrayLike,
  recorded_logits: ArrayLike,
  *,
  temperature: float = 2.0,
  scale_by_temperature_squared: bool = False,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""LwF's :math:`\mathcal{L}_{old}` for one multi-label old head, summed over labels.

  .. math:: \mathcal{L}_{old} = -\sum_k \big[ \sigma(r_k / T) \log \sigma(z_k / T)
     + (1 - \sigma(r_k / T)) \log (1 - \sigma(z_k / T)) \big]

  "If an old task is multi-label classification, we take the loss for each old task
  and label" (Li & Hoiem): each label is its own two-way classifier, so this is
  exactly :func:`distillation_loss` applied per label to the logits ``[z_k, 0]``
  against ``[r_k, 0]`` (``softmax([a, 0])_0 = sigmoid(a)``), summed over the labels.
  The gradient with respect to ``z_k`` is ``(sigmoid(z_k/T) - sigmoid(r_k/T)) / T``;
  no gradient reaches the recorded logits. Finite, with finite gradients, for
  recorded logits of ``+-1e4`` or ``+-inf``. No ``T**2`` factor unless
  ``scale_by_temperature_squared`` is set, as in :func:`distillation_loss`.

  Args:
    logits: ``[batch, num_labels]`` current logits of one multi-label old head.
    recorded_logits: ``[batch, num_labels]`` that head's logits recorded from the
      old network on the same examples.
    temperature: ``T > 0``; the paper uses 2.
    scale_by_temperature_squared: multiply the loss by ``T**2``.
    where: optional ``[batch]`` booleans; masked-out examples give 0.

  Returns:
    ``[batch]`` losses.

  >>> import jax.numpy as jnp
  >>> print(binary_distillation_loss(jnp.array([[0.0, 0.0]]),
  ...                                jnp.array([[1e4, -jnp.inf]])))
  [1.3862944]

  References:
    Li & Hoiem 2017, Sec. 3 and Eq. 2-4; Hinton et al. 2015.
  """
  _check_hyperparameter("temperature", temperature, positive=True)
  logits, recorded_logits, where = _pair(logits, recorded_logits, where)
  z, r = logits / temperature, recorded_logits / temperature
  # sigmoid(-r), not 1 - sigmoid(r), which rounds to 0 for a confident recording.
  loss = _sigmoid_cross_entropy(z, jax.nn.sigmoid(r), jax.nn.sigmoid(-r))
  if scale_by_temperature_squared:
    loss = loss * temperature**2
  return _select_rows(where, loss, 0.0)


def binary_distillation_kl(
  logits: ArrayLike,
  recorded_logits: ArrayLike,
  *,
  temperature: float = 2.0,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""KL divergences of a multi-label head's tempered labels, summed over labels.

  .. math:: \sum_k \mathrm{KL}\big(\mathrm{Bernoulli}(\sigma(r_k/T)) \,\|\,
     \mathrm{Bernoulli}(\sigma(z_k/T))\big)

  It equals :func:`binary_distillation_loss` minus the recorded labels' entropies, as
  :func:`distillation_kl` relates to :func:`distillation_loss`: the same gradient,
  but 0 exactly when the current head reproduces the recorded outputs.

  Args:
    logits: ``[batch, num_labels]`` current logits of one multi-label old head.
    recorded_logits: ``[batch, num_labels]`` recorded logits of that head.
    temperature: ``T > 0``.
    where: optional ``[batch]`` booleans; masked-out examples give 0.

  Returns:
    ``[batch]`` divergences, ``>= 0``.

  >>> import jax.numpy as jnp
  >>> print(binary_distillation_kl(jnp.array([[3.0, -1.0]]), jnp.array([[3.0, -1.0]])))
  [0.]

  References:
    Li & Hoiem 2017, Sec. 3.
  """
  _check_hyperparameter("temperature", temperature, positive=True)
  logits, recorded_logits, where = _pair(logits, recorded_logits, where)
  z, r = logits / temperature, recorded_logits / temperature
  # Per label: the recorded log-probabilities of being on and off.
  log_on, log_off = jax.nn.log_sigmoid(r), jax.nn.log_sigmoid(-r)
  on = _weighted(jnp.exp(log_on), log_on - jax.nn.log_sigmoid(z))
  off = _weighted(jnp.exp(log_off), log_off - jax.nn.log_sigmoid(-z))
  # Rounding can leave a divergence of exactly matching outputs at -1e-12.
  kl = jnp.maximum(jnp.sum(on + off, axis=-1), 0.0)
  return _select_rows(where, kl, 0.0)


def lwf_objective(
  new_logits: ArrayLike,
  labels: ArrayLike,
  old_logits: Mapping[str, ArrayLike],
  recorded_old_logits: Mapping[str, ArrayLike],
  *,
  lambda_old: float = 1.0,
  temperature: float = 2.0,
  scale_by_temperature_squared: bool = False,
  multi_label: bool = False,
  binary_heads: Collection[str] = (),
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""The LwF training loss per example, before weight decay.

  .. math:: \mathcal{L}_{new}(y_n, \hat y_n)
     + \lambda_o \sum_{h \in \text{old heads}} \mathcal{L}_{old}(r_h, z_h)

  Each head is normalised over its own classes only. :math:`\mathcal{L}_{new}` is
  :func:`cross_entropy`, or :func:`binary_cross_entropy` for a multi-label new task;
  :math:`\mathcal{L}_{old}` is :func:`distillation_loss`, or
  :func:`binary_distillation_loss` for the multi-label old heads in
  ``binary_heads``. Weight decay, the paper's :math:`\mathcal{R}`, belongs to the
  optimizer (``lwf_jax.optim``).

  Args:
    new_logits: ``[batch, new_classes]`` logits of the new task's head.
    labels: ``[batch]`` new-task labels in ``[0, new_classes)``, or with
      ``multi_label`` ``[batch, new_classes]`` multi-hot labels.
    old_logits: head name -> ``[batch, classes_h]`` current logits of each old head.
    recorded_old_logits: head name -> ``[batch, classes_h]`` recorded logits, with
      the same names and shapes as ``old_logits``; may be empty (plain
      cross-entropy).
    lambda_old: :math:`\lambda_o \ge 0`, the weight of the old heads' losses.
    temperature: ``T > 0`` of :func:`distillation_loss`.
    scale_by_temperature_squared: see :func:`distillation_loss`.
    multi_label: the new task is multi-label: sigmoid, not softmax, cross-entropy.
    binary_heads: names of the multi-label old heads, distilled label by label. A
      collection of names, not one string; names that are not old heads here are
      ignored, so one set of every multi-label head can serve each step.
    where: optional ``[batch]`` booleans; masked-out examples give 0.

  Returns:
    ``[batch]`` losses.
  """
  if set(old_logits) != set(recorded_old_logits):
    raise ValueError(
      f"old heads {sorted(old_logits)} and recorded heads "
      f"{sorted(recorded_old_logits)} differ"
    )
  _check_hyperparameter("lambda_old", lambda_old, positive=False)
  if isinstance(binary_heads, str):
    raise ValueError(f"binary_heads is a collection of names, got {binary_heads!r}")
  new_loss = binary_cross_entropy if multi_label else cross_entropy
  loss = new_loss(new_logits, labels, where=where)
  for head, recorded in recorded_old_logits.items():
    if jnp.shape(old_logits[head]) != jnp.shape(recorded):
      raise ValueError(
        f"head {head!r}: logits of shape {jnp.shape(old_logits[head])} but "
        f"recorded logits of shape {jnp.shape(recorded)}"
      )
    _check_batch(jnp.asarray(recorded), loss.shape[0], f"head {head!r}'s logits")
    old_loss = binary_distillation_loss if head in binary_heads else distillation_loss
    loss = loss + lambda_old * old_loss(
      old_logits[head],
      recorded,
      temperature=temperature,
      scale_by_temperature_squared=scale_by_temperature_squared,
      where=where,
    )
  return loss


def feature_distance(
  features: ArrayLike,
  recorded_features: ArrayLike,
  *,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""Squared Euclidean distance between current and recorded shared features.

  .. math:: \| f(x) - f_{old}(x) \|_2^2

  The penalty of Less-Forgetting Learning (Jung et al., 2016), which keeps the
  last shared layer's activations close to the original network's. No gradient
  reaches the recorded features.

  Args:
    features: ``[batch, features]`` current trunk outputs.
    recorded_features: ``[batch, features]`` the original network's trunk outputs.
    where: optional ``[batch]`` booleans; masked-out examples give 0.

  Returns:
    ``[batch]`` distances.

  >>> import jax.numpy as jnp
  >>> print(feature_distance(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]])))
  [5.]
  """
  features, recorded_features, where = _pair(
    features, recorded_features, where, name="features"
  )
  return _select_rows(where, jnp.sum((features - recorded_features) ** 2, axis=-1), 0.0)


def weight_distance(params: Any, reference_params: Any) -> jax.Array:
  r"""Squared Euclidean distance between two parameter trees, a scalar.

  .. math:: \sum_\ell \| \theta_\ell - \theta^{ref}_\ell \|_2^2

  The "L2 soft-constrained weights" alternative of the LwF paper (Sec. 4.3):
  a penalty on moving the shared parameters away from the original network's.
  No gradient reaches the reference.

  >>> import jax.numpy as jnp
  >>> print(weight_distance({"w": jnp.array([1.0, 2.0])}, {"w": jnp.zeros(2)}))
  5.0
  """
  if jax.tree.structure(params) != jax.tree.structure(reference_params):
    raise ValueError("the parameters and the reference differ in structure")
  shapes = jax.tree.map(
    lambda p, r: jnp.shape(p) == jnp.shape(r), params, reference_params
  )
  if not all(jax.tree.leaves(shapes)):
    raise ValueError("the parameters and the reference differ in leaf shapes")
  squares = jax.tree.map(
    lambda p, r: jnp.sum((p - jax.lax.stop_gradient(r)) ** 2), params, reference_params
  )
  return sum(jax.tree.leaves(squares), start=jnp.zeros(()))
