"""Inference-mode passes over a whole split: recording outputs, evaluation.

Inference mode means dropout off and BatchNorm on its running statistics; nothing
in the network's variables is updated. The split is cut into fixed-size batches,
the last one padded, so one compiled program serves every batch; padding rows are
dropped (outputs) or masked (counts) before anything is returned. Each batch is
split over ``num_devices`` local devices (see :mod:`lwf_jax.parallel`). On several
processes each records and evaluates its own shard; evaluation's counts are then
summed over the processes.
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lwf_jax import metrics, models, parallel, tasks


class Prediction(NamedTuple):
  """Outputs of the network for a split, row ``i`` for image ``i``."""

  logits: dict[str, np.ndarray]  # {head: [n, classes]}
  features: np.ndarray  # [n, features], the trunk's output


def _inference_step(variables, images, *, model, axis_name=None):
  del axis_name  # every row is independent
  out = models.forward(model, variables, images, train=False)
  return out.logits, out.features


def _eval_step(variables, images, labels, mask, *, model, task, axis_name=None):
  """Correct predictions in both scenarios, and real examples, among ``mask``'s rows.

  Sums, not means: summed over devices and batches, then divided once on the host.
  """
  logits = models.forward(model, variables, images, train=False).logits
  heads = model.head_names
  offset = sum(logits[h].shape[-1] for h in heads[: heads.index(task)])
  combined = jnp.concatenate([logits[h] for h in heads], axis=-1)
  counts = {
    "task_il": jnp.sum((jnp.argmax(logits[task], -1) == labels) & mask),
    "class_il": jnp.sum((jnp.argmax(combined, -1) == labels + offset) & mask),
    "count": jnp.sum(mask),
  }
  return parallel.psum(counts, axis_name)


@functools.cache
def _compiled(step, model: models.MultiHeadNet, num_devices: int, **static):
  bound = functools.partial(step, model=model, **static)
  return parallel.compile_step(bound, num_devices, local=True)


def _batches(arrays: Sequence[np.ndarray], batch_size: int, num_devices: int):
  """Yields ``(arrays' rows, mask)`` per batch, sharded over the devices.

  The last batch is padded with zero rows, False in ``mask``, so that one
  compiled program serves every batch.
  """
  parallel.check_num_devices(num_devices)
  num_examples = len(arrays[0])
  if num_examples == 0 or batch_size < 1:
    raise ValueError(
      f"need images and a batch size >= 1, got {num_examples} images and batch "
      f"size {batch_size}"
    )
  batch_size = min(batch_size, num_examples)
  batch_size += -batch_size % num_devices  # equal slices on every device
  padded = [parallel.pad_to_multiple(a, batch_size)[0] for a in arrays]
  _, mask = parallel.pad_to_multiple(arrays[0], batch_size)
  for start in range(0, len(mask), batch_size):
    rows = slice(start, start + batch_size)
    yield parallel.shard(([a[rows] for a in padded], mask[rows]), num_devices)


def check_images(model: models.MultiHeadNet, images: np.ndarray) -> None:
  """Raises ``ValueError`` unless ``images`` are ``[n, h, w, c]`` with the network's
  channels and at least its input size (larger ones are centre-cropped)."""
  shape = np.shape(images)
  want = model.image_shape
  if len(shape) != 4 or (
    want and (shape[3] != want[2] or shape[1] < want[0] or shape[2] < want[1])
  ):
    raise ValueError(
      f"images of shape {shape} do not fit the network, which reads "
      f"[n, {', '.join(map(str, want))}] (larger images are cropped)"
    )


def check_task_fits(model: models.MultiHeadNet, task: tasks.Task) -> None:
  """Raises ``ValueError`` unless the network has a head for ``task`` of its
  classes and kind, and reads its images."""
  specs = {spec.name: spec for spec in model.head_specs}
  if task.name not in specs:
    raise ValueError(
      f"no head for task {task.name!r}; the network has {model.head_names}"
    )
  spec = specs[task.name]
  if (spec.num_classes, spec.multi_label) != (task.num_classes, task.multi_label):
    raise ValueError(
      f"task {task.name!r} ({task.num_classes} classes, multi-label "
      f"{task.multi_label}) does not fit its head ({spec.num_classes} classes, "
      f"multi-label {spec.multi_label})"
    )
  check_images(model, task.test["image"])


def predict(
  model: models.MultiHeadNet,
  variables: models.Variables,
  images: np.ndarray,
  *,
  batch_size: int,
  num_devices: int = 1,
) -> Prediction:
  """Every head's logits and the shared features for ``images``, in inference mode.

  Args:
    model: the network.
    variables: its variables.
    images: ``[n, height, width, channels]``.
    batch_size: examples per compiled pass (rounded up to a multiple of
      ``num_devices``).
    num_devices: local devices to split each batch over.

  Returns:
    The prediction, as float32 NumPy arrays, row ``i`` for ``images[i]``.
  """
  check_images(model, images)
  step = _compiled(_inference_step, model, num_devices)
  replicated = parallel.replicate(variables, num_devices)
  outputs = [
    parallel.unshard(step(replicated, batch), num_devices)
    for (batch,), _ in _batches([images], batch_size, num_devices)
  ]
  outputs = jax.device_get(outputs)
  num_examples = len(images)
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
  num_devices: int = 1,
) -> dict[str, np.ndarray]:
  """LwF step 1: the current network's outputs of ``heads`` on the new task's images.

  Args:
    model: the network before the new head is added.
    variables: its variables; left unchanged.
    images: ``[n, height, width, channels]`` training images of the new task.
    heads: the old heads to record.
    batch_size: examples per compiled pass.
    num_devices: local devices to split each batch over.

  Returns:
    ``{head: [n, classes]}`` recorded logits, row ``i`` for ``images[i]``.
  """
  unknown = sorted(set(heads) - set(model.head_names))
  if unknown:
    raise ValueError(
      f"cannot record heads {unknown}: the network has {model.head_names}"
    )
  logits = predict(
    model, variables, images, batch_size=batch_size, num_devices=num_devices
  ).logits
  return {head: logits[head] for head in heads}


def evaluate(
  model: models.MultiHeadNet,
  variables: models.Variables,
  task: tasks.Task,
  *,
  batch_size: int,
  num_devices: int = 1,
) -> dict[str, float]:
  """Test accuracy of ``task`` in both scenarios.

  Correct predictions and examples are counted on the devices (padding rows
  masked out), summed over devices and batches, and divided once.

  Returns:
    ``{'task_il': ..., 'class_il': ...}``: task-incremental accuracy (the task is
    known, its own head decides) and class-incremental accuracy (the task is
    unknown: the argmax over every head's classes must be this task's class).
    For a multi-label task, ``task_il`` is its head's mean average precision
    and ``class_il`` NaN (no single class to pick).
  """
  check_task_fits(model, task)
  if task.multi_label:
    return _evaluate_multi_label(
      model, variables, task, batch_size=batch_size, num_devices=num_devices
    )
  step = _compiled(_eval_step, model, num_devices, task=task.name)
  replicated = parallel.replicate(variables, num_devices)
  split = [task.test["image"], task.test["label"]]
  counts = [
    step(replicated, images, labels, mask)
    for (images, labels), mask in _batches(split, batch_size, num_devices)
  ]
  names = ("task_il", "class_il", "count")
  local = [sum(int(np.ravel(c[n])[0]) for c in jax.device_get(counts)) for n in names]
  totals = dict(zip(names, parallel.process_sum(np.array(local)).tolist(), strict=True))
  return {
    scenario: totals[scenario] / totals["count"] for scenario in ("task_il", "class_il")
  }


def _evaluate_multi_label(model, variables, task, *, batch_size, num_devices):
  """Mean average precision of ``task``'s head over the whole test split (every
  process's shard: a ranking measure needs all scores at once)."""
  scores = predict(
    model, variables, task.test["image"], batch_size=batch_size, num_devices=num_devices
  ).logits[task.name]
  scores, targets = parallel.process_concatenate([scores, task.test["label"]])
  return {
    "task_il": metrics.mean_average_precision(scores, targets),
    "class_il": float("nan"),
  }
