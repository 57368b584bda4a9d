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
