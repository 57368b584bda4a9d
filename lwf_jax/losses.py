"""Losses of Learning without Forgetting: pure functions of per-example values.

Every function here takes logits of shape ``[batch, num_classes]`` for one head and
returns a ``[batch]`` array; the caller reduces (mean over the batch, sum over heads).
A head's softmax only ever sees that head's own logits.

References:
  Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2017, arXiv:1606.09282.
  Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def _masked(values: jax.Array, where: ArrayLike | None) -> jax.Array:
  return values if where is None else jnp.where(where, values, 0.0)


def cross_entropy(
  logits: ArrayLike, labels: ArrayLike, *, where: ArrayLike | None = None
) -> jax.Array:
  r"""Softmax cross-entropy with integer labels, exact for extreme logits.

  .. math:: \ell = \log \sum_j \exp(z_j - z_y)

  Subtracting the label's own logit first keeps the value exact where
  ``logsumexp(z) - z_y`` loses it to rounding (logits ``[1e8, 1e8]`` give ln 2,
  not 0).

  Args:
    logits: ``[batch, num_classes]`` unnormalised scores of one head.
    labels: ``[batch]`` integers in ``[0, num_classes)``; not checked here (XLA
      cannot raise), so validate them before training (``lwf_jax.tasks`` does).
    where: optional ``[batch]`` booleans; masked-out examples give 0.

  Returns:
    ``[batch]`` losses.

  >>> import jax.numpy as jnp
  >>> print(cross_entropy(jnp.array([[1e8, 1e8]]), jnp.array([1])))
  [0.6931472]
  """
  logits = jnp.asarray(logits)
  label_logits = jnp.take_along_axis(logits, jnp.asarray(labels)[:, None], axis=-1)
  return _masked(jax.nn.logsumexp(logits - label_logits, axis=-1), where)


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
      old network on the same examples.
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
  targets = jax.nn.softmax(jax.lax.stop_gradient(recorded_logits) / temperature)
  log_probs = jax.nn.log_softmax(jnp.asarray(logits) / temperature)
  loss = -jnp.sum(targets * log_probs, axis=-1)
  if scale_by_temperature_squared:
    loss = loss * temperature**2
  return _masked(loss, where)


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
  log_targets = jax.nn.log_softmax(jax.lax.stop_gradient(recorded_logits) / temperature)
  log_probs = jax.nn.log_softmax(jnp.asarray(logits) / temperature)
  targets = jnp.exp(log_targets)
  # A recorded probability of exactly 0 contributes 0 (0 * log 0 := 0), never NaN.
  terms = jnp.where(targets > 0, targets * (log_targets - log_probs), 0.0)
  return _masked(jnp.sum(terms, axis=-1), where)


def lwf_objective(
  new_logits: ArrayLike,
  labels: ArrayLike,
  old_logits: Mapping[str, ArrayLike],
  recorded_old_logits: Mapping[str, ArrayLike],
  *,
  lambda_old: float = 1.0,
  temperature: float = 2.0,
  scale_by_temperature_squared: bool = False,
  where: ArrayLike | None = None,
) -> jax.Array:
  r"""The LwF training loss per example, before weight decay.

  .. math:: \mathcal{L}_{new}(y_n, \hat y_n)
     + \lambda_o \sum_{h \in \text{old heads}} \mathcal{L}_{old}(r_h, z_h)

  Each head is normalised over its own classes only. Weight decay, the paper's
  :math:`\mathcal{R}`, belongs to the optimizer (``lwf_jax.optim``).

  Args:
    new_logits: ``[batch, new_classes]`` logits of the new task's head.
    labels: ``[batch]`` new-task labels in ``[0, new_classes)``.
    old_logits: head name -> ``[batch, classes_h]`` current logits of each old head.
    recorded_old_logits: head name -> ``[batch, classes_h]`` recorded logits, with
      the same names and shapes as ``old_logits``; may be empty (plain
      cross-entropy).
    lambda_old: :math:`\lambda_o \ge 0`, the weight of the old heads' losses.
    temperature: ``T > 0`` of :func:`distillation_loss`.
    scale_by_temperature_squared: see :func:`distillation_loss`.
    where: optional ``[batch]`` booleans; masked-out examples give 0.

  Returns:
    ``[batch]`` losses.
  """
  if set(old_logits) != set(recorded_old_logits):
    raise ValueError(
      f"old heads {sorted(old_logits)} and recorded heads "
      f"{sorted(recorded_old_logits)} differ"
    )
  loss = cross_entropy(new_logits, labels)
  for head, recorded in recorded_old_logits.items():
    if jnp.shape(old_logits[head]) != jnp.shape(recorded):
      raise ValueError(
        f"head {head!r}: logits of shape {jnp.shape(old_logits[head])} but "
        f"recorded logits of shape {jnp.shape(recorded)}"
      )
    loss = loss + lambda_old * distillation_loss(
      old_logits[head],
      recorded,
      temperature=temperature,
      scale_by_temperature_squared=scale_by_temperature_squared,
    )
  return _masked(loss, where)
