"""Small shared fixtures: tiny tasks and networks that train in milliseconds."""

import jax
import numpy as np
from flax import linen as nn

from lwf_jax import methods, models, tasks


def bits(tree):
  """Leaves as raw bytes, so comparisons are bit-for-bit (0.0 != -0.0, NaN == NaN)."""
  return [np.asarray(leaf).tobytes() for leaf in jax.tree.leaves(tree)]


def toy_task(
  name, *, num_classes=3, num_train=48, num_test=24, seed=0, shape=(4, 4, 1), noise=0.3
):
  """A learnable task: each class is a noisy copy of its own random prototype."""
  rng = np.random.default_rng(seed)
  prototypes = rng.normal(size=(num_classes, *shape))

  def split(n):
    labels = np.arange(n) % num_classes
    images = prototypes[labels] + noise * rng.normal(size=(n, *shape))
    return {"image": images.astype(np.float32), "label": labels}

  return tasks.make_task(name, range(num_classes), split(num_train), split(num_test))


class BatchNormTrunk(nn.Module):
  """A trunk with BatchNorm and dropout, to test inference versus training mode."""

  num_features: int = 8
  dropout_rate: float = 0.5  # applied by the network on the way to the heads

  @nn.compact
  def __call__(self, images, *, train):
    x = nn.Dense(self.num_features)(images.reshape((images.shape[0], -1)))
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    return nn.relu(x)


def network(trunk, tasks_, seed=0):
  """A network with one head per task, initialised from ``seed``."""
  rng = jax.random.key(seed)
  model, variables = models.init_trunk(trunk, rng, tasks_[0].image_shape)
  for i, task in enumerate(tasks_):
    model, variables = models.add_head(
      model,
      variables,
      models.HeadSpec(task.name, task.num_classes),
      jax.random.fold_in(rng, i + 1),
    )
  return model, variables


def task_sequence():
  """Three small tasks of 3, 4 and 2 classes, to add one after another."""
  return [
    toy_task("old"),
    toy_task("new", num_classes=4, seed=1),
    toy_task("third", num_classes=2, seed=2),
  ]


def short_recipe():
  """``(schedule, recipe)``: two epochs a stage, batches of 8."""
  schedule = methods.Schedule(num_epochs=2, learning_rate=0.05)
  return schedule, methods.Recipe(
    schedule, schedule, batch_size=8, inference_batch_size=16
  )
