"""Bad input of every kind fails with a clear ValueError before any training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import continual
from experiments.configs import mnist_to_uci_smoke
from lwf_jax import (
  augment,
  checkpoints,
  inference,
  losses,
  methods,
  metrics,
  sequence,
  tasks,
  train,
  trunks,
)
from tests import helpers
from tests.test_losses import DISTILLATION_LOSSES

LOGITS = jnp.array([[0.0, 1.0, 2.0]])
RECORDED = jnp.array([[2.0, 1.0, 0.0]])


class TestLossArguments:
  @pytest.mark.parametrize("loss", DISTILLATION_LOSSES)
  @pytest.mark.parametrize("temperature", [0.0, -2.0, np.inf, np.nan, True, "2"])
  def test_temperature_must_be_finite_and_positive(self, loss, temperature):
    with pytest.raises(ValueError, match="temperature"):
      loss(LOGITS, RECORDED, temperature=temperature)

  def test_traced_temperature_is_not_checked(self):
    value = jax.jit(lambda t: losses.distillation_loss(LOGITS, RECORDED, temperature=t))
    np.testing.assert_allclose(value(2.0), [1.340348], rtol=1e-5)

  @pytest.mark.parametrize("lambda_old", [-1.0, np.inf, "1"])
  def test_lambda_old_must_be_finite_and_non_negative(self, lambda_old):
    with pytest.raises(ValueError, match="lambda_old"):
      losses.lwf_objective(
        LOGITS, jnp.array([0]), {"a": LOGITS}, {"a": RECORDED}, lambda_old=lambda_old
      )

  @pytest.mark.parametrize("label", [-1, 3, 5])
  def test_cross_entropy_labels_outside_the_head(self, label):
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
      losses.cross_entropy(LOGITS, jnp.array([label]))

  def test_cross_entropy_labels_must_be_integers(self):
    with pytest.raises(ValueError, match="integers"):
      losses.cross_entropy(LOGITS, jnp.array([1.0]))

  def test_masked_rows_may_hold_any_label(self):
    loss = losses.cross_entropy(
      jnp.zeros((2, 3)), jnp.array([0, 99]), where=jnp.array([True, False])
    )
    np.testing.assert_allclose(loss, [np.log(3), 0.0], rtol=1e-6)

  @pytest.mark.parametrize("label", [2.0, -1.0])
  def test_binary_labels_outside_zero_one(self, label):
    with pytest.raises(ValueError, match=r"multi-hot labels must be in \[0, 1\]"):
      losses.binary_cross_entropy(jnp.zeros((1, 2)), jnp.array([[label, 0.0]]))

  def test_weight_distance_needs_matching_trees(self):
    with pytest.raises(ValueError, match="leaf shapes"):
      losses.weight_distance({"w": jnp.ones((2, 2))}, {"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="structure"):
      losses.weight_distance({"w": jnp.ones(2)}, {"v": jnp.zeros(2)})


class TestMetricArguments:
  @pytest.mark.parametrize(
    "labels",
    [np.array([[0], [1], [1]]), np.array([0.0, 1.0, 1.0]), np.array([0, 1])],
  )
  def test_accuracy_needs_one_integer_label_per_row(self, labels):
    with pytest.raises(ValueError, match=r"\[n\] integer labels"):
      metrics.accuracy(np.eye(3)[:, :2], labels)

  def test_accuracy_refuses_nan_logits(self):
    with pytest.raises(ValueError, match="NaN"):
      metrics.accuracy(np.array([[np.nan, 0.0]]), np.array([0]))

  def test_class_incremental_labels_must_fit_the_tasks_head(self):
    logits = {"a": np.zeros((3, 2)), "b": np.zeros((3, 2))}
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
      metrics.class_incremental_accuracy(logits, "a", np.array([2, 2, 2]))
    with pytest.raises(ValueError, match="no head 'c'"):
      metrics.class_incremental_accuracy(logits, "c", np.array([0, 0, 0]))


def split(images, labels):
  return {"image": images, "label": np.asarray(labels)}


class TestTaskArguments:
  def test_train_and_test_images_of_different_scales(self):
    floats = split(np.zeros((4, 2, 2, 1), np.float32), [0, 1, 0, 1])
    bytes_ = split(np.zeros((4, 2, 2, 1), np.uint8), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="differ in dtype"):
      tasks.make_task("a", [0, 1], floats, bytes_)

  def test_tasks_of_different_scales_in_one_sequence(self):
    a = helpers.toy_task("a")
    b = helpers.toy_task("b")
    b = tasks.make_task(
      "b",
      [0, 1, 2],
      {**b.train, "image": b.train["image"].astype(np.uint8)},
      {**b.test, "image": b.test["image"].astype(np.uint8)},
    )
    with pytest.raises(ValueError, match="one image dtype"):
      tasks.check_task_sequence([a, b])

  def test_zero_sized_images(self):
    empty = split(np.zeros((4, 2, 0, 1), np.float32), [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"images must be \[n, height"):
      tasks.make_task("a", [0, 1], empty, empty)

  def test_multi_label_test_split_without_positives(self):
    images = np.zeros((4, 2, 2, 1), np.float32)
    train_split = split(images, np.eye(4, 3, dtype=np.int32))
    test_split = split(images, np.zeros((4, 3), np.int32))
    with pytest.raises(ValueError, match="no positive label"):
      tasks.make_task("a", [0, 1, 2], train_split, test_split, multi_label=True)


@pytest.fixture(scope="module")
def network():
  task = helpers.toy_task("a")
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), [task])
  return task, model, variables


class TestInferenceArguments:
  def test_evaluating_a_task_of_other_classes_than_its_head(self, network):
    _, model, variables = network
    with pytest.raises(ValueError, match="does not fit its head"):
      inference.evaluate(
        model, variables, helpers.toy_task("a", num_classes=5), batch_size=16
      )

  @pytest.mark.parametrize("shape", [(4, 4, 3), (3, 4, 1), (16,)])
  def test_images_the_network_cannot_read(self, network, shape):
    _, model, variables = network
    with pytest.raises(ValueError, match="do not fit the network"):
      inference.predict(
        model, variables, np.zeros((2, *shape), np.float32), batch_size=2
      )

  @pytest.mark.parametrize("num_devices", [0, 16, True, 1.0])
  def test_device_counts_outside_the_local_devices(self, network, num_devices):
    task, model, variables = network
    with pytest.raises(ValueError, match="num_devices must be an integer in"):
      inference.evaluate(model, variables, task, batch_size=16, num_devices=num_devices)


def state_of(variables, **kwargs):
  settings = {
    "trainable": (".*",),
    "learning_rate": 0.1,
    "dropout_rng": jax.random.key(0),
    **kwargs,
  }
  return train.create_train_state(variables, **settings)


class TestTrainingArguments:
  def run(self, network, data=None, **kwargs):
    task, model, variables = network
    settings = {
      "model": model,
      "objective": train.Objective(),
      "num_epochs": 1,
      "batch_size": 8,
      "rng": jax.random.key(0),
      **kwargs,
    }
    data = {"a": task.train} if data is None else data
    return train.train(state_of(variables), data, **settings)

  @pytest.mark.parametrize("num_devices", [0, 16])
  def test_device_counts(self, network, num_devices):
    with pytest.raises(ValueError, match="num_devices must be"):
      self.run(network, num_devices=num_devices)

  @pytest.mark.parametrize("batch_size", [0, -8, 2.5, True])
  def test_batch_sizes(self, network, batch_size):
    with pytest.raises(ValueError, match="batch size must be"):
      self.run(network, batch_size=batch_size)

  def test_no_data(self, network):
    with pytest.raises(ValueError, match="no training data"):
      self.run(network, data={})

  def test_recording_of_an_unknown_head(self, network):
    task = network[0]
    recorded = {"zz": np.zeros((len(task.train["label"]), 3), np.float32)}
    with pytest.raises(ValueError, match=r"recordings of heads \['zz'\]"):
      self.run(network, data={"a": {**task.train, "recorded": recorded}})

  def test_online_teacher_of_an_unknown_head(self, network):
    objective = train.Objective(online_heads=("zz",))
    with pytest.raises(ValueError, match=r"online teacher heads \['zz'\]"):
      self.run(network, objective=objective, reference=network[2])

  def test_reference_without_a_trunk(self, network):
    objective = train.Objective(lambda_weights=0.1)
    with pytest.raises(ValueError, match=r"lack params \['trunk'\]"):
      self.run(network, objective=objective, reference={"params": {}})

  @pytest.mark.parametrize("learning_rate", [-1.0, np.nan, 0.0, True])
  def test_learning_rates(self, network, learning_rate):
    with pytest.raises(ValueError, match="learning_rate"):
      state_of(network[2], learning_rate=learning_rate)

  def test_one_string_as_trainable_patterns(self, network):
    with pytest.raises(ValueError, match="sequence of patterns"):
      state_of(network[2], trainable="trunk/")


SCHEDULE = methods.Schedule(1, 0.1)


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda: train.Objective(online_heads="abc"), "online_heads"),
    (lambda: train.Objective(temperature=True), "temperature must be a number"),
    (lambda: train.Objective(scale_by_temperature_squared="yes"), "must be a bool"),
    (lambda: methods.Schedule(1, True), "learning_rate must be a number"),
    (lambda: methods.Recipe(SCHEDULE, SCHEDULE, subtract_mean="no"), "subtract_mean"),
    (lambda: methods.Recipe(SCHEDULE, SCHEDULE, objective={}), "objective"),
    (lambda: methods.Recipe(SCHEDULE, SCHEDULE, augmentation={}), "augmentation"),
    (lambda: methods.Recipe({}, SCHEDULE), "warmup must be a Schedule"),
    (lambda: methods.Recipe(SCHEDULE, SCHEDULE, momentum="0.9"), "momentum"),
  ],
)
def test_settings_of_the_wrong_type(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_method_given_by_name_to_add_task(network):
  task, model, variables = network
  recipe = methods.Recipe(SCHEDULE, SCHEDULE, batch_size=8)
  with pytest.raises(ValueError, match="must be a Method"):
    methods.add_task(
      model,
      variables,
      helpers.toy_task("b"),
      method="lwf",
      recipe=recipe,
      rng=jax.random.key(0),
    )
  del task


def test_empty_sequence(network):
  _, model, variables = network
  recipe = methods.Recipe(SCHEDULE, SCHEDULE, batch_size=8)
  with pytest.raises(ValueError, match="needs the tasks"):
    sequence.learn_sequence(
      model, variables, [], method=methods.LWF, recipe=recipe, rng=jax.random.key(0)
    )


def test_method_training_layers_the_model_lacks_is_refused_before_work(tmp_path):
  config = mnist_to_uci_smoke.get_config()
  config.model = "resnet32_tiny"
  config.methods = ("lwf", "fine_tuning_fc")
  with pytest.raises(ValueError, match="'fine_tuning_fc' with model 'resnet32_tiny'"):
    continual.run(config, str(tmp_path))
  assert list(tmp_path.iterdir()) == []


def test_first_network_of_another_device_count_is_refused(tmp_path):
  config = mnist_to_uci_smoke.get_config()
  task = continual.load_task(config.tasks[0])
  config.num_devices = 1
  checkpoints.save(
    continual.first_network_directory(str(tmp_path), 0),
    {"params": {"w": np.zeros(2, np.float32)}},
    continual.first_task_settings(config, task, 0),
  )
  continual.check_first_network(config, task, str(tmp_path), 0)  # the same: fine
  config.num_devices = 2
  with pytest.raises(ValueError, match=r"other settings \(devices\)"):
    continual.check_first_network(config, task, str(tmp_path), 0)


def test_recipe_accepts_the_types_its_checks_name():
  methods.Recipe(SCHEDULE, SCHEDULE, augmentation=augment.Augmentation(flip=True))
