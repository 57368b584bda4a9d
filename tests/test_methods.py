"""Adding a task with each method: what trains, what stays, and real outcomes."""

import jax
import pytest

from lwf_jax import inference, losses, methods
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
  assert model.head_sizes == (("old", 3),)
  assert inference.evaluate(model, variables, old, batch_size=50) > 0.9


@pytest.mark.parametrize("name", sorted(methods.METHODS))
def test_every_method_grows_a_head_learns_and_leaves_its_input(original, name):
  _, variables, _, new = original
  before = helpers.bits(variables)
  grown, trained = add(original, name)
  assert grown.head_sizes == (("old", 3), ("new", 4))
  assert set(trained["params"]["heads"]) == {"old", "new"}
  assert inference.evaluate(grown, trained, new, batch_size=50) > 0.6
  assert helpers.bits(variables) == before  # the shared original is never donated


@pytest.mark.parametrize(
  "name, frozen",
  [
    ("feature_extraction", ("trunk", "old")),
    ("fine_tuning", ("old",)),
    ("lwf", ()),
    ("joint", ()),
  ],
)
def test_frozen_parts_bit_identical_and_trained_parts_move(original, name, frozen):
  _, variables, _, _ = original
  _, trained = add(original, name)
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
  before = inference.predict_logits(model, variables, old.test["image"], batch_size=50)
  after = inference.predict_logits(grown, trained, old.test["image"], batch_size=50)
  assert helpers.bits(after["old"]) == helpers.bits(before["old"])


def test_warmup_alone_trains_only_the_new_head(original):
  _, variables, _, _ = original
  recipe = methods.Recipe(
    warmup=RECIPE.warmup, main=methods.Schedule(0, 0.1), batch_size=8
  )
  _, trained = add(original, "lwf", recipe)
  assert helpers.bits(trained["params"]["trunk"]) == helpers.bits(
    variables["params"]["trunk"]
  )


def test_lwf_preserves_old_outputs_better_than_fine_tuning(original):
  model, variables, old, _ = original
  # A hard new task without warm-up, so that fine-tuning moves the trunk a lot.
  new = helpers.toy_task("new", num_classes=6, num_train=96, seed=2, noise=1.5)
  original = (model, variables, old, new)
  recipe = methods.Recipe(
    warmup=methods.Schedule(0, 0.1), main=methods.Schedule(10, 0.1), batch_size=8
  )
  reference = inference.predict_logits(
    model, variables, old.test["image"], batch_size=50
  )["old"]
  drift = {}
  for name in ("lwf", "fine_tuning"):
    grown, trained = add(original, name, recipe)
    logits = inference.predict_logits(grown, trained, old.test["image"], batch_size=50)
    drift[name] = float(losses.distillation_kl(logits["old"], reference).mean())
  assert drift["lwf"] < 0.5 * drift["fine_tuning"], drift


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
    ValueError, match="valid methods: lwf, fine_tuning, feature_extraction, joint"
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
