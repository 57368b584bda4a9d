"""Multi-label tasks (PASCAL VOC style) through the network, the step and evaluation.

A multi-label head is trained with the binary cross-entropy, distilled as an old
head with the binary form of the distillation loss, and scored by mean average
precision.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwf_jax import inference, losses, methods, metrics, models, tasks, train, trunks
from tests import helpers


def multi_label_task(name="tags", num_classes=4, num_train=32, num_test=16, seed=0):
  """Images whose labels are the signs of a fixed linear map: learnable."""
  rng = np.random.default_rng(seed)
  projection = rng.normal(size=(16, num_classes))

  def split(n):
    images = rng.normal(size=(n, 4, 4, 1)).astype(np.float32)
    labels = (images.reshape(n, -1) @ projection > 0).astype(np.int32)
    return {"image": images, "label": labels}

  return tasks.make_task(
    name, range(num_classes), split(num_train), split(num_test), multi_label=True
  )


TAGS = multi_label_task()
NEW = helpers.toy_task("new", num_classes=3, num_train=32, seed=1)


def network():
  model, variables = models.init_trunk(
    trunks.make_trunk("mlp_tiny"), jax.random.key(0), (4, 4, 1)
  )
  for i, spec in enumerate(
    [models.HeadSpec("tags", 4, multi_label=True), models.HeadSpec("new", 3)]
  ):
    model, variables = models.add_head(model, variables, spec, jax.random.key(i + 1))
  return model, variables


def test_make_task_keeps_the_multi_hot_columns_in_head_order():
  labels = np.array([[1, 0, 1], [0, 1, 1]])
  split = {"image": np.zeros((2, 2, 2, 1), np.float32), "label": labels}
  task = tasks.make_task("t", (2, 0), split, split, multi_label=True)
  np.testing.assert_array_equal(task.train["label"], [[1, 1], [1, 0]])
  assert task.train["label"].dtype == np.int32 and task.multi_label


@pytest.mark.parametrize(
  "labels, message",
  [
    (np.array([[0, 2], [1, 0]]), "of 0 and 1"),
    (np.array([1, 0]), "of 0 and 1"),
  ],
)
def test_make_task_rejects_bad_multi_hot_labels(labels, message):
  split = {"image": np.zeros((2, 2, 2, 1), np.float32), "label": labels}
  with pytest.raises(ValueError, match=message):
    tasks.make_task("t", (0, 1), split, split, multi_label=True)


def test_step_distils_a_multi_label_old_head_in_binary_form():
  model, variables = network()
  recorded = np.random.default_rng(3).normal(size=(32, 4)).astype(np.float32)
  batch = {
    "new": {
      "image": NEW.train["image"],
      "label": NEW.train["label"],
      "recorded": {"tags": recorded},
    }
  }
  state = train.create_train_state(
    variables, trainable=(".*",), learning_rate=0.1, dropout_rng=jax.random.key(0)
  )
  objective = train.Objective(lambda_old=0.5)
  _, step_metrics = train.compiled_train_step(model, objective, 1)(state, batch, None)
  out = models.forward(
    model,
    variables,
    batch["new"]["image"],
    train=True,
    dropout_rng=jax.random.fold_in(state.dropout_rng, 0),
  )
  ce = losses.cross_entropy(out.logits["new"], batch["new"]["label"])
  distil = losses.binary_distillation_loss(out.logits["tags"], recorded)
  np.testing.assert_allclose(
    step_metrics["loss"], jnp.mean(ce + 0.5 * distil), rtol=1e-5
  )
  kl = losses.binary_distillation_kl(out.logits["tags"], recorded).mean()
  np.testing.assert_allclose(step_metrics["kl/tags"], kl, rtol=1e-5)


def test_step_trains_a_multi_label_new_task_with_binary_cross_entropy():
  model, variables = network()
  batch = {"tags": {"image": TAGS.train["image"], "label": TAGS.train["label"]}}
  state = train.create_train_state(
    variables, trainable=(".*",), learning_rate=0.1, dropout_rng=jax.random.key(0)
  )
  _, step_metrics = train.compiled_train_step(model, train.Objective(), 1)(
    state, batch, None
  )
  out = models.forward(
    model,
    variables,
    TAGS.train["image"],
    train=True,
    dropout_rng=jax.random.fold_in(state.dropout_rng, 0),
  )
  bce = losses.binary_cross_entropy(out.logits["tags"], TAGS.train["label"]).mean()
  np.testing.assert_allclose(step_metrics["loss"], bce, rtol=1e-5)
  correct = np.mean((np.asarray(out.logits["tags"]) > 0) == TAGS.train["label"])
  np.testing.assert_allclose(step_metrics["accuracy/tags"], correct, rtol=1e-6)


@pytest.mark.parametrize("num_devices", [1, 8])
def test_evaluation_is_the_heads_mean_average_precision(num_devices):
  model, variables = network()
  logits = inference.predict(model, variables, TAGS.test["image"], batch_size=16)
  expected = metrics.mean_average_precision(logits.logits["tags"], TAGS.test["label"])
  scores = inference.evaluate(
    model, variables, TAGS, batch_size=5, num_devices=num_devices
  )
  assert scores["task_il"] == pytest.approx(expected, abs=1e-12)
  assert np.isnan(scores["class_il"])


def test_lwf_learns_after_a_multi_label_task():
  recipe = methods.Recipe(
    methods.Schedule(2, 0.1), methods.Schedule(6, 0.1), batch_size=8
  )
  model, variables = methods.learn_first_task(
    "mlp_tiny",
    TAGS,
    schedule=methods.Schedule(20, 0.1),
    recipe=recipe,
    rng=jax.random.key(0),
  )
  assert model.head_specs[0].multi_label
  before = inference.evaluate(model, variables, TAGS, batch_size=16)["task_il"]
  model, variables = methods.add_task(
    model,
    variables,
    NEW,
    method=methods.get_method("lwf"),
    recipe=recipe,
    rng=jax.random.key(1),
  )
  after = inference.evaluate(model, variables, TAGS, batch_size=16)["task_il"]
  new = inference.evaluate(model, variables, NEW, batch_size=16)["task_il"]
  assert before > 0.7 and after > 0.7 and new > 0.6
