"""Data parallelism on eight fake CPU devices (see conftest.py).

The pmapped path must train exactly like one device on the same global batch,
keep every device's copy of the state bit-identical, and count only real examples.
"""

import re

import jax
import numpy as np
import pytest

from lwf_jax import inference, methods, parallel, train, trunks
from tests import helpers

DEVICES = 8


def test_eight_fake_devices():
  assert jax.local_device_count() == DEVICES


class TestShard:
  def test_rows_go_to_devices_in_order_and_come_back(self):
    tree = {"image": np.arange(16 * 3).reshape(16, 3), "label": np.arange(16)}
    sharded = parallel.shard(tree, DEVICES)
    assert sharded["image"].shape == (DEVICES, 2, 3)
    np.testing.assert_array_equal(sharded["label"][3], [6, 7])
    np.testing.assert_array_equal(
      parallel.unshard(sharded, DEVICES)["image"], tree["image"]
    )

  def test_uneven_split_raises(self):
    with pytest.raises(ValueError, match="cannot split 12 examples evenly over 8"):
      parallel.shard({"label": np.arange(12)}, DEVICES)

  def test_one_device_is_the_identity(self):
    tree = {"label": np.arange(5)}
    assert parallel.shard(tree, 1) is tree and parallel.unshard(tree, 1) is tree


def test_pad_to_multiple_masks_the_padding():
  padded, mask = parallel.pad_to_multiple(np.ones((5, 2), np.float32), 4)
  assert padded.shape == (8, 2) and padded.dtype == np.float32
  np.testing.assert_array_equal(padded[5:], 0)
  np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 0, 0, 0])
  unchanged, mask = parallel.pad_to_multiple(np.ones(8), 4)
  assert len(unchanged) == 8 and mask.all()


@pytest.mark.parametrize(
  "requested, expected", [(0, DEVICES), (1, 1), (3, 3), (DEVICES, DEVICES)]
)
def test_resolve_num_devices(requested, expected):
  assert parallel.resolve_num_devices(requested) == expected


@pytest.mark.parametrize("requested", [-1, DEVICES + 1, 1.5, True, "2"])
def test_resolve_num_devices_rejects(requested):
  with pytest.raises(ValueError, match="num_devices"):
    parallel.resolve_num_devices(requested)


def test_each_device_gets_its_own_dropout_key():
  key = jax.random.key(0)
  keys = jax.pmap(lambda _: parallel.device_rng(key, parallel.AXIS), parallel.AXIS)(
    np.zeros(DEVICES)
  )
  data = jax.random.key_data(keys).reshape(DEVICES, -1)
  assert len({row.tobytes() for row in np.asarray(data)}) == DEVICES
  assert parallel.device_rng(key, None) is key


# A network with an old head and a new one, and a global batch of 16 for each.
OLD = helpers.toy_task("old", num_train=16)
NEW = helpers.toy_task("new", num_classes=4, num_train=16, seed=1)
RECIPE = methods.Recipe(
  methods.Schedule(1, 0.1), methods.Schedule(1, 0.1), batch_size=16
)


def stage(name):
  """The main stage of ``name``: model, state, batch, objective, reference."""
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), [OLD, NEW])
  method = methods.get_method(name)
  escaped = re.escape(NEW.name)
  trainable = tuple(p.replace("{new}", escaped) for p in method.trainable)
  state = train.create_train_state(
    variables,
    trainable=trainable,
    learning_rate=0.1,
    weight_decay=5e-4,
    dropout_rng=jax.random.key(1),
  )
  old_model, old_variables = helpers.network(
    trunks.make_trunk("mlp_tiny"), [OLD], seed=2
  )
  recorded = inference.predict(
    old_model, old_variables, NEW.train["image"], batch_size=16
  )
  sub = {"image": NEW.train["image"], "label": NEW.train["label"]}
  if method.teacher == "recorded":
    sub["recorded"] = {"old": recorded.logits["old"]}
  if method.feature_penalty:
    sub["recorded_features"] = recorded.features
  batch = {"new": sub}
  if method.old_data:
    batch["old"] = {"image": OLD.train["image"], "label": OLD.train["label"]}
  objective = RECIPE.stage_objective(method, ["old"])
  _, reference = helpers.network(
    trunks.make_trunk("mlp_tiny"), [OLD]
  )  # the same trunk, before "new"
  return model, state, batch, objective, reference


def run_steps(name, num_devices, num_steps=3, donate=False):
  model, state, batch, objective, reference = stage(name)
  step = train.compiled_train_step(model, objective, num_devices, donate)
  state = parallel.replicate(state, num_devices)
  reference = parallel.replicate(reference, num_devices)
  batch = parallel.shard(batch, num_devices)
  losses = []
  for _ in range(num_steps):
    state, metrics = step(state, batch, reference)
    losses.append(np.ravel(metrics["loss"])[0])
  return state, losses


# One method per kind of step: recorded or online distillation, a frozen trunk
# (BatchNorm in inference mode) with a hidden head layer, several sub-batches,
# the feature and weight penalties; the rest differ from these only in patterns
# or loss weights.
@pytest.mark.parametrize(
  "name",
  ["lwf", "lwf_online", "fine_tuning", "feature_extraction", "joint", "lfl", "l2_soft"],
)
def test_eight_devices_train_like_one(name):
  one, losses_one = run_steps(name, 1)
  many, losses_many = run_steps(name, DEVICES)
  np.testing.assert_allclose(losses_many, losses_one, rtol=1e-5)
  many = parallel.unreplicate(many, DEVICES)
  for a, b in zip(
    jax.tree.leaves(many.params), jax.tree.leaves(one.params), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert int(many.step) == int(one.step) == 3


def test_replicated_state_stays_bit_identical_with_dropout_and_batchnorm():
  # Dropout masks differ per device, BatchNorm statistics per device: the averaged
  # gradients and statistics must still leave every copy identical, bit for bit.
  model, variables = helpers.network(helpers.BatchNormTrunk(), [NEW])
  state = train.create_train_state(
    variables, trainable=(".*",), learning_rate=0.1, dropout_rng=jax.random.key(3)
  )
  step = train.compiled_train_step(model, train.Objective(), DEVICES)
  state = parallel.replicate(state, DEVICES)
  batch = parallel.shard(
    {"new": {k: NEW.train[k] for k in ("image", "label")}}, DEVICES
  )
  for _ in range(5):
    state, _ = step(state, batch, None)
  for part in (state.params, state.batch_stats, state.opt_state):
    for leaf in jax.tree.leaves(jax.device_get(part)):
      assert all(leaf[d].tobytes() == leaf[0].tobytes() for d in range(DEVICES))
  first = jax.tree.leaves(parallel.unreplicate(state.batch_stats, DEVICES))
  initial = jax.tree.leaves(variables["batch_stats"])
  assert any(not np.array_equal(a, b) for a, b in zip(first, initial, strict=True))


@pytest.mark.parametrize("num_devices", [1, DEVICES])
def test_snapshot_and_recordings_survive_donated_steps(num_devices):
  model, state, batch, objective, reference = stage("lwf_online")
  snapshot = jax.device_get(reference)
  recorded = jax.device_get(batch["new"])
  step = train.compiled_train_step(model, objective, num_devices, donate=True)
  state = parallel.replicate(state, num_devices)
  replicated = parallel.replicate(reference, num_devices)
  sharded = parallel.shard(batch, num_devices)
  for _ in range(3):
    state, _ = step(state, sharded, replicated)
  assert helpers.bits(reference) == helpers.bits(snapshot)
  assert helpers.bits(batch["new"]) == helpers.bits(recorded)
  assert helpers.bits(parallel.unreplicate(replicated, num_devices)) == helpers.bits(
    snapshot
  )


class TestInference:
  """Padding rows never reach the outputs or the counts, on any number of devices."""

  task = helpers.toy_task("new", num_classes=4, num_train=8, num_test=21, seed=1)

  @pytest.fixture(autouse=True)
  def network(self):
    self.model, self.variables = helpers.network(
      trunks.make_trunk("mlp_tiny"), [OLD, NEW]
    )

  @pytest.mark.parametrize("batch_size", [5, 8, 21, 100])
  def test_predictions_equal_one_device_row_by_row(self, batch_size):
    images = self.task.test["image"]
    one = inference.predict(self.model, self.variables, images, batch_size=batch_size)
    many = inference.predict(
      self.model, self.variables, images, batch_size=batch_size, num_devices=DEVICES
    )
    assert many.features.shape == (21, self.model.trunk.num_features)
    for head in ("old", "new"):
      np.testing.assert_allclose(
        many.logits[head], one.logits[head], rtol=1e-5, atol=1e-6
      )

  @pytest.mark.parametrize("batch_size", [5, 8, 21, 100])
  @pytest.mark.parametrize("num_devices", [1, 3, DEVICES])
  def test_evaluate_counts_real_examples_only(self, batch_size, num_devices):
    prediction = inference.predict(
      self.model, self.variables, self.task.test["image"], batch_size=21
    )
    labels = self.task.test["label"]
    combined = np.concatenate([prediction.logits["old"], prediction.logits["new"]], -1)
    expected = {
      "task_il": np.mean(prediction.logits["new"].argmax(-1) == labels),
      "class_il": np.mean(combined.argmax(-1) == labels + 3),
    }
    scores = inference.evaluate(
      self.model,
      self.variables,
      self.task,
      batch_size=batch_size,
      num_devices=num_devices,
    )
    assert scores == pytest.approx(expected, abs=1e-12)


def test_adding_a_task_on_eight_devices_matches_one():
  model, variables = methods.learn_first_task(
    "mlp_tiny",
    OLD,
    schedule=methods.Schedule(2, 0.1),
    recipe=RECIPE,
    rng=jax.random.key(0),
  )
  outcomes = []
  for num_devices in (1, DEVICES):
    recipe = methods.Recipe(
      methods.Schedule(2, 0.1),
      methods.Schedule(3, 0.1),
      batch_size=8,
      num_devices=num_devices,
    )
    _, trained = methods.add_task(
      model,
      variables,
      NEW,
      method=methods.get_method("lwf"),
      recipe=recipe,
      rng=jax.random.key(1),
    )
    outcomes.append(trained)
  for a, b in zip(*(jax.tree.leaves(o) for o in outcomes), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"num_devices": DEVICES + 1}, "exceeds the 8 local devices"),
    ({"num_devices": 0}, "num_devices must be >= 1"),
    ({"num_devices": 3, "batch_size": 16}, "not a multiple of the 3 devices"),
  ],
)
def test_recipe_rejects_bad_device_counts(kwargs, message):
  with pytest.raises(ValueError, match=message):
    methods.Recipe(methods.Schedule(1, 0.1), methods.Schedule(1, 0.1), **kwargs)
