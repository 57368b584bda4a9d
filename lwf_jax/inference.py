"""Inference-mode passes over a whole split: recording old heads' outputs, evaluation.

Inference mode means dropout off and BatchNorm on its running statistics; nothing
in the network's variables is read for update or written. The split is cut into
fixed-size batches, the last one padded, so one compiled program serves every
batch; padding rows are dropped before anything is returned.
"""

import functools
from collections.abc import Sequence

import jax
import numpy as np

from lwf_jax import metrics, models, tasks


@functools.partial(jax.jit, static_argnames="model")
def _inference_step(variables, images, *, model):
  logits, _ = models.head_logits(model, variables, images, train=False)
  return logits


def predict_logits(
  model: models.MultiHeadNet,
  variables: models.Variables,
  images: np.ndarray,
  *,
  batch_size: int,
) -> dict[str, np.ndarray]:
  """Every head's logits for ``images``, in inference mode.

  Args:
    model: the network.
    variables: its variables.
    images: ``[n, height, width, channels]``.
    batch_size: examples per compiled pass.

  Returns:
    ``{head: [n, classes]}`` float32 NumPy arrays, row ``i`` for ``images[i]``.
  """
  num_examples = len(images)
  batch_size = min(batch_size, num_examples)
  num_batches = -(-num_examples // batch_size)
  padding = num_batches * batch_size - num_examples
  images = np.concatenate(
    [images, np.zeros((padding, *images.shape[1:]), images.dtype)]
  )
  outputs = [
    _inference_step(
      variables, images[i * batch_size : (i + 1) * batch_size], model=model
    )
    for i in range(num_batches)
  ]
  return {
    head: np.concatenate([np.asarray(out[head]) for out in outputs])[:num_examples]
    for head, _ in model.head_sizes
  }


def record_outputs(
  model: models.MultiHeadNet,
  variables: models.Variables,
  images: np.ndarray,
  *,
  heads: Sequence[str],
  batch_size: int,
) -> dict[str, np.ndarray]:
  """LwF step 1: the current network's outputs of ``heads`` on the new task's images.

  Args:
    model: the network before the new head is added.
    variables: its variables; left unchanged.
    images: ``[n, height, width, channels]`` training images of the new task.
    heads: the old heads to record.
    batch_size: examples per compiled pass.

  Returns:
    ``{head: [n, classes]}`` recorded logits, row ``i`` for ``images[i]``.
  """
  unknown = sorted(set(heads) - set(dict(model.head_sizes)))
  if unknown:
    raise ValueError(
      f"cannot record heads {unknown}: the network has "
      f"{[name for name, _ in model.head_sizes]}"
    )
  logits = predict_logits(model, variables, images, batch_size=batch_size)
  return {head: logits[head] for head in heads}


def evaluate(
  model: models.MultiHeadNet,
  variables: models.Variables,
  task: tasks.Task,
  *,
  batch_size: int,
) -> float:
  """Test accuracy of ``task``'s own head (task-incremental: the task is known)."""
  logits = predict_logits(model, variables, task.test["image"], batch_size=batch_size)
  return metrics.accuracy(logits[task.name], task.test["label"])
