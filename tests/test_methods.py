"""Adding a task with each method: what trains, what stays, and real outcomes."""

import dataclasses

import jax
import numpy as np
import pytest

from lwf_jax import inference, losses, methods, models
from tests import helpers

RECIPE = methods.Recipe(
  warmup=methods.Schedule(num_epochs=2, learning_rate=0.1),
  main=methods.Schedule(num_epochs=4, learning_rate=0.1),
  batch_size=8,
)


@pytest.fixture(scope="module")
def original():
  """A network trained on the old task, and the old and new tasks."""
  old = helpers.toy_task("old", num_train=96)
  new = helpers.toy_task("new", num_classes=4, seed=1)
  model, variables = methods.learn_first_task(
    "mlp_tiny",
    old,
    schedule=methods.Schedule(num_epochs=10, learning_rate=0.1),
    recipe=RECIPE,
    rng=jax.random.key(0),
  )
  return model, variables, old, new


def add(original, name, recipe=RECIPE):
  model, variables, old, new = original
  return methods.add_task(
    model,
    variables,
    new,
    method=methods.get_method(name),
    recipe=recipe,
    rng=jax.random.key(1),
    old_tasks=[old],
  )


def test_original_network_learns_the_old_task(original):
  model, variables, old, _ = original
  assert model.head_names == ["old"]
  assert inference.evaluate(model, variables, old, batch_size=50)["task_il"] > 0.9


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_method_grows_a_head_learns_and_leaves_its_input(original, name):
  _, variables, _, new = original
  before = helpers.bits(variables)
  grown, trained = add(original, name)
  assert grown.head_names == ["old", "new"]
  assert set(trained["params"]["heads"]) == {"old", "new"}
  assert inference.evaluate(grown, trained, new, batch_size=50)["task_il"] > 0.6
  assert helpers.bits(variables) == before  # the shared original is never donated


def with_edge_values(variables):
  """A copy with a -0.0 and a subnormal in the trunk's and the old head's biases:
  adding a zero update would turn the one into 0.0 and flush the other."""
  params = jax.tree.map(np.array, variables["params"])
  for bias in (params["trunk"]["fc1"]["bias"], params["heads"]["old"]["out"]["bias"]):
    bias[:2] = (-0.0, 1e-40)
  return {**variables, "params": params}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(
  "name, frozen",
  [
    ("feature_extraction", ("trunk", "old")),
    ("fine_tuning", ("old",)),
    ("fine_tuning_fc", ("old",)),  # an MLP trunk is all fc layers
    ("lfl", ("old",)),
    ("l2_soft", ("old",)),
    ("lwf", ()),
    ("lwf_no_warmup", ()),
    ("lwf_online", ()),
    ("lwf_t2", ()),
    ("joint", ()),
  ],
)
def test_frozen_parts_bit_identical_and_trained_parts_move(
  original, name, frozen, optimizer
):
  model, variables, old, new = original
  variables = with_edge_values(variables)
  recipe = dataclasses.replace(RECIPE, optimizer=optimizer, weight_decay=0.1)
  _, trained = add((model, variables, old, new), name, recipe)
  parts = lambda v: {
    "trunk": v["params"]["trunk"],
    "old": v["params"]["heads"]["old"],
  }
  for part in ("trunk", "old"):
    same = helpers.bits(parts(trained)[part]) == helpers.bits(parts(variables)[part])
    assert same == (part in frozen), part


def test_feature_extraction_keeps_old_predictions_exactly(original):
  model, variables, old, _ = original
  grown, trained = add(original, "feature_extraction")
  before = inference.predict(model, variables, old.test["image"], batch_size=50)
  after = inference.predict(grown, trained, old.test["image"], batch_size=50)
  assert helpers.bits(after.logits["old"]) == helpers.bits(before.logits["old"])


@pytest.mark.parametrize("name", ["lfl", "l2_soft"])
def test_penalties_change_training_with_the_default_recipe(original, name):
  _, tuned = add(original, "fine_tuning")
  _, penalised = add(original, name)
  assert helpers.bits(penalised["params"]["trunk"]) != helpers.bits(
    tuned["params"]["trunk"]
  )


def test_fine_tune_fc_keeps_conv_layers_bit_identical():
  old = helpers.toy_task("old", num_train=48)
  new = helpers.toy_task("new", num_classes=4, seed=1)
  model, variables = methods.learn_first_task(
    "cnn_tiny",
    old,
    schedule=methods.Schedule(num_epochs=2, learning_rate=0.1),
    recipe=RECIPE,
    rng=jax.random.key(0),
  )
  _, trained = add((model, variables, old, new), "fine_tuning_fc")
  trunk, trained_trunk = variables["params"]["trunk"], trained["params"]["trunk"]
  assert helpers.bits(trained_trunk["conv1"]) == helpers.bits(trunk["conv1"])
  assert helpers.bits(trained_trunk["fc1"]) != helpers.bits(trunk["fc1"])
  old_head = trained["params"]["heads"]["old"]
  assert helpers.bits(old_head) == helpers.bits(variables["params"]["heads"]["old"])


def test_feature_extraction_head_has_a_hidden_layer(original):
  model, _, _, _ = original
  grown, trained = add(original, "feature_extraction")
  width = model.trunk.num_features
  assert grown.head_specs[-1] == models.HeadSpec("new", 4, (width,))
  assert trained["params"]["heads"]["new"]["fc1"]["kernel"].shape == (width, width)
  assert grown.head_specs[0] == models.HeadSpec("old", 3)


def test_online_teacher_trains_like_recorded_responses(original):
  _, trained = add(original, "lwf")
  _, online = add(original, "lwf_online")
  for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(online), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_no_warmup_leaves_the_new_head_as_initialised(original):
  model, variables, _, _ = original
  recipe = methods.Recipe(RECIPE.warmup, methods.Schedule(0, 0.1), batch_size=8)
  _, trained = add(original, "lwf_no_warmup", recipe)
  head_rng = jax.random.split(jax.random.key(1), 3)[0]
  _, fresh = models.add_head(model, variables, models.HeadSpec("new", 4), head_rng)
  new_head = trained["params"]["heads"]["new"]
  assert helpers.bits(new_head) == helpers.bits(fresh["params"]["heads"]["new"])
  _, warmed = add(original, "lwf", recipe)
  assert helpers.bits(warmed["params"]["heads"]["new"]) != helpers.bits(new_head)


@pytest.mark.parametrize(
  "name, online, squared, features, weights",
  [
    ("lwf", (), False, 0.0, 0.0),
    ("lwf_online", ("a", "b"), False, 0.0, 0.0),
    ("lwf_t2", (), True, 0.0, 0.0),
    ("fine_tuning", (), False, 0.0, 0.0),
    ("lfl", (), False, 0.3, 0.0),
    ("l2_soft", (), False, 0.0, 0.7),
  ],
)
def test_each_method_switches_on_its_own_loss_terms(
  name, online, squared, features, weights
):
  recipe = methods.Recipe(
    RECIPE.warmup, RECIPE.main, lambda_features=0.3, lambda_weights=0.7
  )
  objective = recipe.stage_objective(methods.get_method(name), ["a", "b"])
  assert objective.online_heads == online
  assert objective.scale_by_temperature_squared == squared
  assert objective.lambda_features == features
  assert objective.lambda_weights == weights


def test_warmup_alone_trains_only_the_new_head(original):
  _, variables, _, _ = original
  recipe = methods.Recipe(
    warmup=RECIPE.warmup, main=methods.Schedule(0, 0.1), batch_size=8
  )
  _, trained = add(original, "lwf", recipe)
  assert helpers.bits(trained["params"]["trunk"]) == helpers.bits(
    variables["params"]["trunk"]
  )


def test_lwf_keeps_old_outputs_on_its_images_closer_than_fine_tuning(original):
  model, variables, old, _ = original
  # A hard new task without warm-up, so that fine-tuning moves the trunk a lot.
  new = helpers.toy_task("new", num_classes=6, num_train=96, seed=2, noise=1.5)
  recipe = methods.Recipe(
    warmup=methods.Schedule(0, 0.1), main=methods.Schedule(10, 0.05), batch_size=8
  )
  images = new.train["image"]
  before = inference.predict(model, variables, images, batch_size=50).logits["old"]
  drift = {}
  for name in ("lwf", "fine_tuning"):
    grown, trained = add((model, variables, old, new), name, recipe)
    after = inference.predict(grown, trained, images, batch_size=50).logits["old"]
    drift[name] = float(losses.distillation_kl(after, before).mean())
  assert drift["lwf"] < 0.25 * drift["fine_tuning"], drift


def test_joint_training_needs_old_data(original):
  model, variables, _, new = original
  with pytest.raises(ValueError, match=r"needs the data of old heads \['old'\]"):
    methods.add_task(
      model,
      variables,
      new,
      method=methods.get_method("joint"),
      recipe=RECIPE,
      rng=jax.random.key(1),
    )


def test_adding_an_existing_task_raises(original):
  model, variables, old, _ = original
  with pytest.raises(ValueError, match="already has a head named 'old'"):
    methods.add_task(
      model,
      variables,
      old,
      method=methods.get_method("lwf"),
      recipe=RECIPE,
      rng=jax.random.key(1),
    )


def test_unknown_method_lists_valid_ones():
  with pytest.raises(
    ValueError, match=r"valid methods: lwf, lwf_no_warmup, .*, l2_soft"
  ):
    methods.get_method("ewc")


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda: methods.Schedule(-1, 0.1), "num_epochs"),
    (lambda: methods.Schedule(1, 0.0), "learning_rate"),
    (lambda: methods.Recipe(RECIPE.warmup, RECIPE.main, batch_size=0), "batch_size"),
    (lambda: methods.Recipe(RECIPE.warmup, RECIPE.main, momentum=1.0), "momentum"),
    (
      lambda: methods.Recipe(RECIPE.warmup, RECIPE.main, lambda_features=0.0),
      "lambda_features",
    ),
    (
      lambda: methods.Recipe(RECIPE.warmup, RECIPE.main, lambda_weights=0.0),
      "lambda_weights",
    ),
    (
      lambda: methods.Recipe(RECIPE.warmup, RECIPE.main, weight_decay=-1.0),
      "weight_decay",
    ),
  ],
)
def test_bad_settings_raise(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_batch_size_checked_before_any_work(original):
  model, variables, _, new = original
  recipe = methods.Recipe(RECIPE.warmup, RECIPE.main, batch_size=1000)
  with pytest.raises(ValueError, match="batch size 1000 exceeds"):
    methods.add_task(
      model,
      variables,
      new,
      method=methods.get_method("lwf"),
      recipe=recipe,
      rng=jax.random.key(1),
    )
