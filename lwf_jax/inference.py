"""Inference-mode passes over a whole split: recording outputs, evaluation.

Inference mode means dropout off and BatchNorm on its running statistics; nothing
in the network's variables is updated. The split is cut into fixed-size batches,
the last one padded, so one compiled program serves every batch; padding rows are
dropped before anything is returned.
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from lwf_jax import metrics, models, tasks


class Prediction(NamedTuple):
  """Outputs of the network for a split, row ``i`` for image ``i``."""

  logits: dict[str, np.ndarray]  # {head: [n, classes]}
  features: np.ndarray  # [n, features], the trunk's output


@functools.partial(jax.jit, static_argnames="model")
def _inference_step(variables, images, *, model):
  out = models.forward(model, variables, images, train=False)
  return out.logits, out.features


def predict(
  model: models.MultiHeadNet,
  variables: models.Variables,
  images: np.ndarray,
  *,
  batch_size: int,
) -> Prediction:
  """Every head's logits and the shared features for ``images``, in inference mode.

  Args:
    model: the network.
    variables: its variables.
    images: ``[n, height, width, channels]``.
    batch_size: examples per compiled pass.

  Returns:
    The prediction, as float32 NumPy arrays.
  """
  num_examples = len(images)
  if num_examples == 0 or batch_size < 1:
    raise ValueError(
      f"need images and a batch size >= 1, got {num_examples} images and batch "
      f"size {batch_size}"
    )
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
  outputs = jax.device_get(outputs)
  return Prediction(
    logits={
      head: np.concatenate([logits[head] for logits, _ in outputs])[:num_examples]
      for head in model.head_names
    },
    features=np.concatenate([features for _, features in outputs])[:num_examples],
  )


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
  unknown = sorted(set(heads) - set(model.head_names))
  if unknown:
    raise ValueError(
      f"cannot record heads {unknown}: the network has {model.head_names}"
    )
  logits = predict(model, variables, images, batch_size=batch_size).logits
  return {head: logits[head] for head in heads}


def evaluate(
  model: models.MultiHeadNet,
  variables: models.Variables,
  task: tasks.Task,
  *,
  batch_size: int,
) -> dict[str, float]:
  """Test accuracy of ``task`` in both scenarios.

  Returns:
    ``{'task_il': ..., 'class_il': ...}``: task-incremental accuracy (the task is
    known, its own head decides) and class-incremental accuracy (the task is
    unknown: the argmax over every head's classes must be this task's class).
  """
  if task.name not in model.head_names:
    raise ValueError(
      f"no head for task {task.name!r}; the network has {model.head_names}"
    )
  logits = predict(model, variables, task.test["image"], batch_size=batch_size).logits
  labels = task.test["label"]
  return {
    "task_il": metrics.accuracy(logits[task.name], labels),
    "class_il": metrics.class_incremental_accuracy(logits, task.name, labels),
  }
