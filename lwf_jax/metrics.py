"""Metrics, computed on the host: accuracy, average precision, continual learning.

Average precision scores multi-label tasks (PASCAL VOC), where one argmax does not.

The accuracy matrix ``R`` is ``[num_tasks, num_tasks]``: ``R[i, j]`` is the test
accuracy on task ``j`` after training task ``i``; entries with ``j > i`` (tasks not
yet seen) are NaN.
"""

from collections.abc import Mapping, Sequence

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of ``[n, classes]`` logits whose argmax is the ``[n]`` label."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  if (
    logits.ndim != 2
    or labels.shape != logits.shape[:1]
    or len(labels) == 0
    or not np.issubdtype(labels.dtype, np.integer)
  ):
    raise ValueError(
      f"need [n, classes] logits and [n] integer labels, n > 0: got logits of "
      f"shape {logits.shape} and labels of shape {labels.shape} ({labels.dtype})"
    )
  if np.isnan(logits).any():
    raise ValueError("logits must not be NaN")
  if labels.min() < 0 or labels.max() >= logits.shape[-1]:
    raise ValueError(
      f"labels must be in [0, {logits.shape[-1]}), got {labels.min()}..{labels.max()}"
    )
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


def class_incremental_accuracy(
  logits: Mapping[str, np.ndarray], task: str, labels: np.ndarray
) -> float:
  """Accuracy when the task is unknown: argmax over all heads' classes.

  Args:
    logits: ``{head: [n, classes_h]}`` for every head, in head order.
    task: the head the examples belong to.
    labels: ``[n]`` labels within ``task``'s head.

  Returns:
    The fraction whose overall argmax is ``task``'s output for the label.
  """
  heads = list(logits)
  if task not in logits:
    raise ValueError(f"no head {task!r} among {heads}")
  labels = np.asarray(labels)
  accuracy(logits[task], labels)  # raises unless the labels fit the task's head
  offset = sum(logits[h].shape[-1] for h in heads[: heads.index(task)])
  combined = np.concatenate([logits[h] for h in heads], axis=-1)
  return accuracy(combined, np.asarray(labels) + offset)


def _check_ranking(
  scores: np.ndarray, targets: np.ndarray, ndim: int
) -> tuple[np.ndarray, np.ndarray]:
  """Float scores without NaN and boolean targets, both ``[n]`` or ``[n, classes]``."""
  scores, targets = np.asarray(scores, float), np.asarray(targets)
  shape = "[n]" if ndim == 1 else "[n, classes]"
  if scores.ndim != ndim or scores.shape != targets.shape or not len(scores):
    raise ValueError(
      f"need {shape} scores and targets of the same shape, n > 0: got scores of "
      f"shape {scores.shape} and targets of shape {targets.shape}"
    )
  if np.isnan(scores).any():
    raise ValueError("scores must not be NaN")
  if not np.isin(targets, (0, 1)).all():
    raise ValueError(f"targets must be 0 or 1, got values {np.unique(targets)}")
  return scores, targets.astype(bool)


def _average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  # A stable sort: among equal scores, the earlier example ranks first.
  hits = targets[np.argsort(-scores, kind="stable")]
  precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
  interpolated = np.maximum.accumulate(precision[::-1])[::-1]
  # Recall rises by 1 / positives at each hit and nowhere else.
  return float(interpolated[hits].sum() / hits.sum())


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  r"""Average precision of one class, as the PASCAL VOC 2010-2012 devkit computes it.

  .. math:: \mathrm{AP} = \sum_k (r_k - r_{k-1}) \max_{k' \ge k} p_{k'}

  over the ranks ``k`` of the examples sorted by descending score, with ``p_k`` and
  ``r_k`` the precision and recall of the top ``k``: the area under the
  precision-recall curve once precision is made non-increasing from the right
  (``VOCap``; not the 11-point AP of VOC 2007). Equal scores are ranked by a stable
  sort, the earlier example first, as the devkit's MATLAB ``sort`` does; so ties
  between a positive and a negative are not averaged over their orders.

  Args:
    scores: ``[n]`` finite or infinite scores, higher meaning more likely positive;
      NaN raises.
    targets: ``[n]`` 0 or 1 (drop VOC's "difficult" examples before calling), with
      at least one 1.

  Returns:
    The AP, in ``(0, 1]``.

  >>> print(round(average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]), 4))
  0.8333

  References:
    Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV
    2010; the VOC 2010-2012 development kit, ``VOCevalcls.m``.
  """
  scores, targets = _check_ranking(scores, targets, ndim=1)
  if not targets.any():
    raise ValueError("average precision needs at least one positive target")
  return _average_precision(scores, targets)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  """Mean of :func:`average_precision` over the classes with a positive example.

  A class without a positive example has no AP and is skipped; a ValueError if no
  class has one.

  Args:
    scores: ``[n, classes]`` scores, e.g. a multi-label head's logits; NaN raises.
    targets: ``[n, classes]`` multi-hot 0 or 1.

  Returns:
    The mAP, in ``(0, 1]``.

  >>> print(mean_average_precision([[0.9, 0.1], [0.2, 0.8]], [[1, 0], [0, 0]]))
  1.0
  """
  scores, targets = _check_ranking(scores, targets, ndim=2)
  present = np.flatnonzero(targets.any(axis=0))
  if not len(present):
    raise ValueError("mean average precision needs a class with a positive target")
  return float(
    np.mean([_average_precision(scores[:, k], targets[:, k]) for k in present])
  )


def _check_matrix(matrix: np.ndarray) -> np.ndarray:
  matrix = np.asarray(matrix, float)
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or not matrix.size:
    raise ValueError(
      f"an accuracy matrix is square and not empty, got shape {matrix.shape}"
    )
  seen = matrix[np.tril(np.ones(matrix.shape, bool))]
  if np.isnan(seen).any():
    raise ValueError("an accuracy matrix needs R[i, j] for every j <= i")
  if not np.all((seen >= 0) & (seen <= 1)):
    raise ValueError("accuracies are fractions in [0, 1]")
  return matrix


def average_accuracy(matrix: np.ndarray) -> np.ndarray:
  """``[T]``: after each task ``i``, the mean accuracy over tasks ``0..i``."""
  matrix = _check_matrix(matrix)
  return np.array([matrix[i, : i + 1].mean() for i in range(len(matrix))])


def forgetting(matrix: np.ndarray) -> float:
  """Average forgetting after the last task (Chaudhry et al., 2018).

  For each earlier task ``j < T-1``: its best accuracy over rows ``j..T-2`` minus
  its final accuracy ``R[T-1, j]``; averaged over those tasks. NaN for one task.
  """
  matrix = _check_matrix(matrix)
  last = len(matrix) - 1
  if last == 0:
    return float("nan")
  drops = [matrix[j:last, j].max() - matrix[last, j] for j in range(last)]
  return float(np.mean(drops))


def backward_transfer(matrix: np.ndarray) -> float:
  """Backward transfer (Lopez-Paz & Ranzato, 2017): mean of ``R[T-1, j] - R[j, j]``.

  Over earlier tasks ``j < T-1``; negative values are forgetting. NaN for one task.
  """
  matrix = _check_matrix(matrix)
  last = len(matrix) - 1
  if last == 0:
    return float("nan")
  return float(np.mean([matrix[last, j] - matrix[j, j] for j in range(last)]))


def forward_transfer(matrix: np.ndarray, reference: Sequence[float]) -> float:
  """Forward transfer against networks trained on each task alone.

  Mean over tasks ``j >= 1`` of ``R[j, j] - reference[j]``, where ``reference[j]``
  is the accuracy on task ``j`` of a network trained from scratch on it alone: how
  much learning the earlier tasks helps (or hurts) learning task ``j``. (Lopez-Paz
  and Ranzato's form, ``R[j-1, j]`` against chance, needs task ``j``'s head before
  its training, which a network with one head per task does not have.)
  NaN for one task.
  """
  matrix = _check_matrix(matrix)
  reference = np.asarray(reference, float)
  if reference.shape != (len(matrix),):
    raise ValueError(
      f"need one reference accuracy per task ({len(matrix)}), got {reference.shape}"
    )
  if not np.all((reference >= 0) & (reference <= 1)):  # NaN fails too
    raise ValueError(f"reference accuracies are fractions in [0, 1], got {reference}")
  if len(matrix) == 1:
    return float("nan")
  return float(np.mean([matrix[j, j] - reference[j] for j in range(1, len(matrix))]))
