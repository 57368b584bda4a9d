"""Host-side metrics on small hand-made arrays."""

import numpy as np
import pytest

from lwf_jax import metrics


def test_accuracy():
  logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
  assert metrics.accuracy(logits, np.array([1, 0, 0, 0])) == 0.75


def test_accuracy_rejects_mismatched_or_empty():
  with pytest.raises(ValueError):
    metrics.accuracy(np.zeros((2, 3)), np.zeros(3, int))
  with pytest.raises(ValueError):
    metrics.accuracy(np.zeros((0, 3)), np.zeros(0, int))
  with pytest.raises(ValueError, match="logits of shape"):
    metrics.accuracy(np.zeros(3), np.zeros(3, int))


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0]])
def test_accuracy_rejects_labels_outside_the_classes(labels):
  # argmax can never equal label 3 of 3 classes: a silent 0 would hide the bug.
  with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
    metrics.accuracy(np.zeros((2, 3)), np.array(labels))


NAN = np.nan
# R[i, j]: accuracy on task j after training task i.
R = np.array(
  [
    [0.9, NAN, NAN],
    [0.7, 0.8, NAN],
    [0.6, 0.9, 0.5],
  ]
)


def test_class_incremental_accuracy_offsets_each_head():
  logits = {
    "a": np.array([[5.0, 0.0], [0.0, 1.0], [0.0, 0.0]]),
    "b": np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 9.0]]),
  }
  # Overall argmax: a0, b0, b2; task b's labels 0, 0, 2 are columns 2, 2, 4.
  assert metrics.class_incremental_accuracy(logits, "b", np.array([0, 0, 2])) == 2 / 3
  assert metrics.class_incremental_accuracy(logits, "a", np.array([0, 1, 0])) == 1 / 3


def test_average_accuracy():
  np.testing.assert_allclose(metrics.average_accuracy(R), [0.9, 0.75, 2.0 / 3.0])


def test_forgetting_uses_the_best_earlier_accuracy():
  # Task 0: best 0.9, now 0.6 -> 0.3; task 1: best 0.8, now 0.9 -> -0.1.
  assert metrics.forgetting(R) == pytest.approx((0.3 - 0.1) / 2)
  # The best earlier accuracy, not the first: task 0 rose to 0.95 before falling.
  rising = np.array([[0.5, NAN, NAN], [0.95, 0.8, NAN], [0.6, 0.8, 0.7]])
  assert metrics.forgetting(rising) == pytest.approx((0.35 + 0.0) / 2)


def test_backward_transfer():
  # (0.6 - 0.9) and (0.9 - 0.8), averaged.
  assert metrics.backward_transfer(R) == pytest.approx((-0.3 + 0.1) / 2)


def test_forward_transfer_against_single_task_references():
  # Tasks 1 and 2: 0.8 - 0.7 and 0.5 - 0.6.
  assert metrics.forward_transfer(R, [0.9, 0.7, 0.6]) == pytest.approx(0.0)
  assert metrics.forward_transfer(R, [0.0, 0.6, 0.4]) == pytest.approx(0.15)


def test_one_task_has_no_transfer_or_forgetting():
  one = np.array([[0.7]])
  assert np.isnan(metrics.forgetting(one))
  assert np.isnan(metrics.backward_transfer(one))
  assert np.isnan(metrics.forward_transfer(one, [0.5]))


@pytest.mark.parametrize(
  "matrix, message",
  [
    (np.zeros((2, 3)), "square"),
    (np.zeros((0, 0)), "not empty"),
    (np.array([[0.5, NAN], [NAN, 0.5]]), "every j <= i"),
    (np.array([[0.5, NAN], [1.5, 0.5]]), r"fractions in \[0, 1\]"),
    (np.array([[0.5, NAN], [0.4, -0.1]]), r"fractions in \[0, 1\]"),
    (np.array([[np.inf, NAN], [0.4, 0.1]]), r"fractions in \[0, 1\]"),
    (np.array([[90.0, NAN], [80.0, 70.0]]), r"fractions in \[0, 1\]"),  # percent
  ],
)
@pytest.mark.parametrize(
  "metric",
  [
    metrics.average_accuracy,
    metrics.forgetting,
    metrics.backward_transfer,
    lambda m: metrics.forward_transfer(m, [0.5] * max(len(m), 1)),
  ],
)
def test_bad_matrices_raise(matrix, message, metric):
  with pytest.raises(ValueError, match=message):
    metric(matrix)


@pytest.mark.parametrize(
  "reference, message",
  [
    ([0.5, 0.5], "one reference accuracy per task"),
    ([0.5, NAN, 0.5], r"fractions in \[0, 1\]"),
    ([0.5, 50.0, 0.5], r"fractions in \[0, 1\]"),
  ],
)
def test_forward_transfer_bad_references_raise(reference, message):
  with pytest.raises(ValueError, match=message):
    metrics.forward_transfer(R, reference)


def _brute_force_average_precision(scores, targets):
  """The definition, threshold by threshold: distinct scores only."""
  scores, targets = np.asarray(scores, float), np.asarray(targets, bool)
  precision = np.array([targets[scores >= t].mean() for t in scores])
  recall = np.array([targets[scores >= t].sum() for t in scores]) / targets.sum()
  levels = np.arange(1, targets.sum() + 1) / targets.sum()
  # At each recall level, the best precision at that recall or beyond.
  return np.mean([precision[recall >= level].max() for level in levels])


class TestAveragePrecision:
  def test_hand_computed(self):
    # Hits at ranks 1 and 3: precision 1 and 2/3, each for half the recall.
    ap = metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)

  def test_precision_is_interpolated_from_the_right(self):
    # Hits at ranks 2, 4, 5: precision 1/2, 2/4, 3/5, each raised to the 3/5 to its
    # right; without interpolation the AP would be (1/2 + 1/2 + 3/5) / 3.
    ap = metrics.average_precision([5, 4, 3, 2, 1], [0, 1, 0, 1, 1])
    assert ap == pytest.approx(0.6)

  def test_perfect_and_worst_rankings(self):
    assert metrics.average_precision([0.1, 0.9, 0.8], [0, 1, 1]) == 1.0
    assert metrics.average_precision([3.0, 2.0, 1.0], [0, 0, 1]) == pytest.approx(1 / 3)
    assert metrics.average_precision([np.inf, -np.inf], [1, 0]) == 1.0

  def test_matches_the_definition_in_any_order(self):
    rng = np.random.default_rng(0)
    scores, targets = rng.normal(size=50), rng.integers(0, 2, size=50)
    order = rng.permutation(50)
    expected = _brute_force_average_precision(scores, targets)
    assert metrics.average_precision(scores, targets) == pytest.approx(expected)
    assert metrics.average_precision(
      scores[order], targets[order] == 1
    ) == pytest.approx(expected)

  def test_ties_keep_the_examples_order(self):
    # A stable sort: of equal scores, the earlier example ranks first.
    assert metrics.average_precision([0.5, 0.5], [0, 1]) == 0.5
    assert metrics.average_precision([0.5, 0.5], [1, 0]) == 1.0

  @pytest.mark.parametrize(
    "scores, targets, message",
    [
      ([0.5, 0.4], [0, 0], "at least one positive"),
      ([0.5, 0.4], [1, 0, 1], r"\[n\] scores and targets of the same shape"),
      ([[0.5, 0.4]], [[1, 0]], r"\[n\] scores"),
      ([], [], "n > 0"),
      ([0.5, np.nan], [1, 0], "NaN"),
      ([0.5, 0.4], [1, -1], "0 or 1"),  # VOC's -1 for a negative
      ([0.5, 0.4], [1, 0.5], "0 or 1"),
    ],
  )
  def test_bad_inputs_raise(self, scores, targets, message):
    with pytest.raises(ValueError, match=message):
      metrics.average_precision(scores, targets)


class TestMeanAveragePrecision:
  def test_hand_computed_skipping_a_class_without_positives(self):
    scores = np.array(
      [[0.9, 0.1, 0.3], [0.8, 0.2, 0.2], [0.7, 0.3, 0.1], [0.6, 0.4, 0]]
    )
    targets = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    # Class 0: 5/6 as above; class 1: its positive ranks first, 1; class 2 skipped.
    assert metrics.mean_average_precision(scores, targets) == pytest.approx(11 / 12)

  def test_is_the_mean_of_per_class_average_precisions(self):
    rng = np.random.default_rng(1)
    scores, targets = rng.normal(size=(40, 5)) * 10, rng.random((40, 5)) < 0.3
    expected = np.mean(
      [metrics.average_precision(scores[:, k], targets[:, k]) for k in range(5)]
    )
    assert metrics.mean_average_precision(scores, targets) == pytest.approx(expected)

  @pytest.mark.parametrize(
    "scores, targets, message",
    [
      (np.zeros((3, 2)), np.zeros((3, 2)), "a class with a positive"),
      (np.zeros(3), np.ones(3), r"\[n, classes\] scores"),
      (np.zeros((3, 2)), np.ones((3, 3)), "same shape"),
      (np.zeros((0, 2)), np.ones((0, 2)), "n > 0"),
      (np.full((2, 2), np.nan), np.ones((2, 2)), "NaN"),
      (np.zeros((2, 2)), np.full((2, 2), 2), "0 or 1"),
    ],
  )
  def test_bad_inputs_raise(self, scores, targets, message):
    with pytest.raises(ValueError, match=message):
      metrics.mean_average_precision(scores, targets)
