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
    (np.array([[0.5, NAN], [NAN, 0.5]]), "every j <= i"),
  ],
)
def test_bad_matrices_raise(matrix, message):
  with pytest.raises(ValueError, match=message):
    metrics.average_accuracy(matrix)


def test_forward_transfer_needs_one_reference_per_task():
  with pytest.raises(ValueError, match="one reference accuracy per task"):
    metrics.forward_transfer(R, [0.5, 0.5])
