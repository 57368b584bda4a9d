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
