"""Metrics computed on the host from predictions."""

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of ``[n, classes]`` logits whose argmax is the ``[n]`` label."""
  if len(logits) != len(labels) or len(labels) == 0:
    raise ValueError(
      f"need as many labels as logits, and some: got {len(logits)} "
      f"logits and {len(labels)} labels"
    )
  return float(np.mean(np.argmax(logits, axis=-1) == labels))
