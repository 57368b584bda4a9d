"""The case that ``test_multihost.py`` trains in two processes and in one.

Shared by the test and its worker processes, so both sides build exactly the same
networks, data and settings.
"""

import jax

from lwf_jax import inference, methods, parallel, train, trunks
from tests import helpers

NUM_STEPS = 3
OLD = helpers.toy_task("old", num_train=16, num_test=20)
NEW = helpers.toy_task("new", num_classes=4, num_train=40, num_test=22, seed=1)


def old_network():
  """The network before the new task (an untrained head is as good a teacher)."""
  return helpers.network(trunks.make_trunk("mlp_tiny"), [OLD], seed=2)


def recipe(num_devices: int) -> methods.Recipe:
  return methods.Recipe(
    methods.Schedule(2, 0.1),
    methods.Schedule(4, 0.1),
    batch_size=8,
    num_devices=num_devices,
    inference_batch_size=6,
  )


def stage():
  """LwF's main stage on one global batch of 16: model, state, batch, objective,
  reference."""
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), [OLD, NEW])
  state = train.create_train_state(
    variables,
    trainable=(".*",),
    learning_rate=0.1,
    dropout_rng=jax.random.key(1),
  )
  old_model, old_variables = old_network()
  images = NEW.train["image"][:16]
  recorded = inference.predict(old_model, old_variables, images, batch_size=16)
  batch = {
    "new": {
      "image": images,
      "label": NEW.train["label"][:16],
      "recorded": {"old": recorded.logits["old"]},
    }
  }
  objective = recipe(2).stage_objective(methods.get_method("lwf"), ["old"])
  return model, state, batch, objective, old_variables


def evaluate(model, variables, *, num_devices: int) -> dict:
  """Both tasks' scores; each process evaluates its shard, counts are summed."""
  return {
    task.name: inference.evaluate(
      model,
      variables,
      parallel.process_shard(task),
      batch_size=recipe(num_devices).inference_batch_size,
      num_devices=num_devices,
    )
    for task in (OLD, NEW)
  }
