"""The train step and loop: batching, recorded outputs, frozen leaves, failures."""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwf_jax import inference, methods, models, seeds, train, trunks
from tests import helpers


def make_state(variables, trainable, *, learning_rate=0.1, optimizer="sgd"):
  return train.create_train_state(
    variables,
    trainable=trainable,
    learning_rate=learning_rate,
    optimizer=optimizer,
    momentum=0.9,
    weight_decay=5e-4,
    dropout_rng=jax.random.key(0),
  )


class TestEpochIndices:
  def test_first_task_is_one_permutation_other_tasks_cycle(self):
    sizes = {"new": 40, "old": 7}
    indices = train.epoch_indices(jax.random.key(0), sizes, steps=5, batch_size=8)
    assert indices["new"].shape == indices["old"].shape == (5, 8)
    np.testing.assert_array_equal(np.sort(indices["new"].ravel()), np.arange(40))
    counts = np.bincount(np.asarray(indices["old"]).ravel(), minlength=7)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 40

  def test_deterministic_and_different_per_key(self):
    sizes = {"new": 40}
    a = train.epoch_indices(jax.random.key(0), sizes, steps=5, batch_size=8)
    b = train.epoch_indices(jax.random.key(0), sizes, steps=5, batch_size=8)
    c = train.epoch_indices(jax.random.key(1), sizes, steps=5, batch_size=8)
    np.testing.assert_array_equal(a["new"], b["new"])
    assert not np.array_equal(a["new"], c["new"])


def test_take_batch_moves_every_array_of_an_example_together():
  ids = np.arange(30)
  data = {
    "t": {
      "image": ids.reshape(30, 1, 1, 1).astype(np.float32),
      "label": (ids % 3).astype(np.int32),
      "recorded": {"a": np.stack([ids, -ids], 1).astype(np.float32)},
    }
  }
  indices = train.epoch_indices(jax.random.key(3), {"t": 30}, steps=3, batch_size=10)
  seen = []
  for step in range(3):
    batch = train.take_batch(data, indices, step)["t"]
    row_ids = np.asarray(batch["image"]).ravel().astype(int)
    np.testing.assert_array_equal(batch["label"], row_ids % 3)
    np.testing.assert_array_equal(batch["recorded"]["a"][:, 0], row_ids)
    np.testing.assert_array_equal(batch["recorded"]["a"][:, 1], -row_ids)
    seen.extend(row_ids)
  assert sorted(seen) == list(range(30))


class TestRecordedOutputsStayAttached:
  """Through the real step: a student that equals the recorder has zero KL."""

  def run_epochs(self, corrupt):
    old, new = helpers.toy_task("old"), helpers.toy_task("new", seed=1)
    model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), [old])
    split = dict(new.train)
    split["recorded"] = inference.record_outputs(
      model, variables, split["image"], heads=["old"], batch_size=16
    )
    if corrupt:  # what a batching bug would do: recordings of other images
      split["recorded"] = {"old": np.roll(split["recorded"]["old"], 1, axis=0)}
    model, variables = models.add_head(
      model, variables, models.HeadSpec("new", 3), jax.random.key(9)
    )
    # Only the new head trains, so the old head's outputs cannot drift.
    state = make_state(variables, ["heads/new/"])
    step_fn = jax.jit(
      functools.partial(train.train_step, model=model, objective=train.Objective())
    )
    data, kls = {"new": split}, []
    for epoch in range(3):
      indices = train.epoch_indices(
        jax.random.key(epoch), {"new": 48}, steps=4, batch_size=12
      )
      for step in range(4):
        state, metrics = step_fn(state, train.take_batch(data, indices, step))
        kls.append(float(metrics["kl/old"]))
    return np.array(kls)

  def test_kl_is_zero_every_step(self):
    np.testing.assert_array_less(self.run_epochs(corrupt=False), 1e-6)

  def test_the_check_detects_mispairing(self):
    assert self.run_epochs(corrupt=True).min() > 1e-3


class TestFrozenLeaves:
  def network(self):
    old = helpers.toy_task("old")
    model, variables = helpers.network(helpers.BatchNormTrunk(), [old])
    params = variables["params"]
    # A negative zero and a subnormal, whose bits p + 0.0 would change.
    bias = params["trunk"]["Dense_0"]["bias"].at[:2].set(jnp.array([-0.0, 1e-40]))
    dense = {**params["trunk"]["Dense_0"], "bias": bias}
    params = {**params, "trunk": {**params["trunk"], "Dense_0": dense}}
    variables = {**variables, "params": params}
    return models.add_head(
      model, variables, models.HeadSpec("new", 3), jax.random.key(5)
    )

  @pytest.mark.parametrize("optimizer", ["sgd", "adam"])
  def test_warmup_keeps_trunk_old_heads_and_statistics_bit_identical(self, optimizer):
    model, variables = self.network()
    new = helpers.toy_task("new", seed=1)
    trained = methods.train_stage(
      model,
      variables,
      {"new": new.train},
      trainable=["heads/new/"],
      schedule=methods.Schedule(num_epochs=3, learning_rate=0.5),
      recipe=methods.Recipe(
        warmup=methods.Schedule(1, 0.1),
        main=methods.Schedule(1, 0.1),
        batch_size=8,
        optimizer=optimizer,
      ),
      rng=jax.random.key(0),
      desc="test",
    )
    frozen = lambda v: (
      v["params"]["trunk"],
      v["params"]["heads"]["old"],
      v["batch_stats"],
    )
    assert helpers.bits(frozen(trained)) == helpers.bits(frozen(variables))
    assert helpers.bits(trained["params"]["heads"]["new"]) != helpers.bits(
      variables["params"]["heads"]["new"]
    )

  def test_optimizer_state_covers_the_new_head(self):
    _, variables = self.network()
    state = make_state(variables, [".*"])
    paths = [
      jax.tree_util.keystr(path)
      for path, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)
    ]
    assert any("'heads']['new']['out']['kernel']" in p for p in paths)
    assert any("'heads']['old']['out']['kernel']" in p for p in paths)


def test_training_learns_and_updates_batch_statistics():
  task = helpers.toy_task("t", num_train=96)
  model, variables = helpers.network(helpers.BatchNormTrunk(16), [task])
  state = make_state(variables, [".*"])
  state, metrics = train.train(
    state,
    {"t": task.train},
    model=model,
    objective=train.Objective(),
    num_epochs=20,
    batch_size=16,
    rng=jax.random.key(0),
  )
  assert metrics["accuracy/t"] > 0.9
  trained = {"params": state.params, "batch_stats": state.batch_stats}
  assert inference.evaluate(model, trained, task, batch_size=50)["task_il"] > 0.9
  assert helpers.bits(state.batch_stats) != helpers.bits(variables["batch_stats"])


def test_joint_batches_train_each_head_on_its_own_images():
  a, b = helpers.toy_task("a"), helpers.toy_task("b", num_classes=4, seed=1)
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), [a, b])
  state = make_state(variables, [".*"])
  step_fn = jax.jit(
    functools.partial(train.train_step, model=model, objective=train.Objective())
  )
  batch = {
    "a": {"image": a.train["image"][:5], "label": a.train["label"][:5]},
    "b": {"image": b.train["image"][:7], "label": b.train["label"][:7]},
  }
  _, metrics = step_fn(state, batch)
  images = np.concatenate([a.train["image"][:5], b.train["image"][:7]])
  logits = model.apply(variables, images, train=False)
  expected_a = -jax.nn.log_softmax(logits["a"][:5])[np.arange(5), a.train["label"][:5]]
  expected_b = -jax.nn.log_softmax(logits["b"][5:])[np.arange(7), b.train["label"][:7]]
  np.testing.assert_allclose(metrics["ce/a"], expected_a.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["ce/b"], expected_b.mean(), rtol=1e-5)
  np.testing.assert_allclose(
    metrics["loss"], expected_a.mean() + expected_b.mean(), rtol=1e-5
  )


def test_one_compilation_per_stage():
  task = helpers.toy_task("t")
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), [task])
  state = make_state(variables, [".*"])
  counted = chex.assert_max_traces(train.train_step, n=1)
  step_fn = jax.jit(
    functools.partial(counted, model=model, objective=train.Objective()),
  )
  data = {"t": task.train}
  for epoch in range(3):
    indices = train.epoch_indices(
      jax.random.key(epoch), {"t": 48}, steps=6, batch_size=8
    )
    for step in range(6):
      state, _ = step_fn(state, train.take_batch(data, indices, step))


def train_toy(state, model, task, **kwargs):
  """``train.train`` on ``task``'s training split; ``kwargs`` override defaults."""
  settings = {
    "model": model,
    "objective": train.Objective(),
    "num_epochs": 2,
    "batch_size": 8,
    "rng": jax.random.key(0),
    "desc": "t",
    **kwargs,
  }
  return train.train(state, {"t": task.train}, **settings)


def test_non_finite_loss_names_its_first_step_looped_or_scanned():
  task = helpers.toy_task("t")
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), [task])
  logged, steps = [], []
  for scan_epochs in (False, True):
    state = make_state(variables, [".*"], learning_rate=1e30)
    with pytest.raises(FloatingPointError, match="non-finite loss") as error:
      train_toy(
        state,
        model,
        task,
        scan_epochs=scan_epochs,
        log_every=1,
        log=lambda step, metrics: logged.append(metrics["loss"]),
      )
    steps.append(re.search(r"^t: .* in epoch 1, step (\d+)$", str(error.value))[1])
  # The looped epoch logged every step up to the first non-finite one.
  assert np.isfinite(logged).all() and steps == [str(len(logged) + 1)] * 2


@pytest.mark.parametrize(
  "log_every, expected",
  [(0, [6, 12, 18]), (4, [4, 8, 12, 16, 18]), (1, list(range(1, 19))), (50, [18])],
)
def test_logs_every_interval_looped_or_scanned(log_every, expected):
  """48 examples in batches of 8: 6 steps per epoch, 18 in 3 epochs."""
  task = helpers.toy_task("t")
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), [task])
  runs = []
  for scan_epochs in (False, True):
    logged = []
    _, last = train_toy(
      make_state(variables, [".*"]),
      model,
      task,
      num_epochs=3,
      scan_epochs=scan_epochs,
      log_every=log_every,
      log=lambda step, metrics, logged=logged: logged.append((step, metrics)),
    )
    assert [step for step, _ in logged] == expected
    assert all(type(v) is float for _, m in logged for v in m.values())
    assert logged[-1][1] == last
    runs.append(logged)
  for (_, looped), (_, scanned) in zip(*runs, strict=True):
    assert looped.keys() == scanned.keys() == {"loss", "ce/t", "accuracy/t"}
    for name, value in looped.items():
      np.testing.assert_allclose(scanned[name], value, rtol=1e-5, atol=1e-6)


def test_vmapped_seeds_log_one_value_per_seed():
  task = helpers.toy_task("t")
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), [task])
  state = train.create_train_state(
    seeds.stack([variables] * 3),
    trainable=(".*",),
    learning_rate=0.05,
    dropout_rng=seeds.keys([0, 1, 2]),
  )
  logged = []
  train_toy(
    state,
    model,
    task,
    num_epochs=1,
    rng=seeds.keys([3, 4, 5]),
    num_seeds=3,
    log_every=3,
    log=lambda step, metrics: logged.append((step, metrics["loss"].shape)),
  )
  assert logged == [(3, (3,)), (6, (3,))]  # 6 steps in all


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"num_epochs": -1}, "num_epochs must be >= 0"),
    ({"num_epochs": True}, "num_epochs must be an integer"),
    ({"start_epoch": 3}, "start_epoch 3 exceeds num_epochs 2"),
    ({"start_epoch": 1}, "start_epoch 1 needs a state at step 6"),
    ({"checkpoint_every": 2}, "checkpoint_every needs a checkpoint function"),
    ({"log_every": -1}, "log_every must be >= 0"),
  ],
)
def test_bad_loop_arguments_raise_before_training(kwargs, message):
  task = helpers.toy_task("t")
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), [task])
  with pytest.raises(ValueError, match=message):
    train_toy(make_state(variables, [".*"]), model, task, **kwargs)


def test_batch_larger_than_data_raises_before_compiling():
  task = helpers.toy_task("t", num_train=10)
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), [task])
  state = make_state(variables, [".*"])
  with pytest.raises(ValueError, match="batch size 16 exceeds the 10 training"):
    train_toy(state, model, task, batch_size=16)


@pytest.mark.parametrize(
  "kwargs, message",
  [({"temperature": 0.0}, "temperature"), ({"lambda_old": -1.0}, "lambda_old")],
)
def test_objective_rejects_bad_values(kwargs, message):
  with pytest.raises(ValueError, match=message):
    train.Objective(**kwargs)


class TestObjectiveTerms:
  """Each optional loss term, through the real step, against a hand computation."""

  def setup_method(self):
    self.old, self.new = helpers.toy_task("old"), helpers.toy_task("new", seed=1)
    model, self.original = helpers.network(trunks.make_trunk("mlp_tiny"), [self.old])
    self.old_model = model
    self.model, self.variables = models.add_head(
      model, self.original, models.HeadSpec("new", 3), jax.random.key(9)
    )
    self.batch = {
      "new": {
        "image": self.new.train["image"][:8],
        "label": self.new.train["label"][:8],
      }
    }

  def step(self, objective, batch, reference=None):
    state = make_state(self.variables, [".*"])
    step_fn = jax.jit(
      functools.partial(train.train_step, model=self.model, objective=objective)
    )
    return step_fn(state, batch, reference)

  def plain_loss(self):
    _, metrics = self.step(train.Objective(), self.batch)
    return float(metrics["loss"])

  def test_online_teacher_equals_recorded_targets(self):
    recorded = inference.record_outputs(
      self.old_model,
      self.original,
      self.batch["new"]["image"],
      heads=["old"],
      batch_size=8,
    )
    with_recording = {"new": {**self.batch["new"], "recorded": recorded}}
    state_a, metrics_a = self.step(train.Objective(), with_recording)
    state_b, metrics_b = self.step(
      train.Objective(online_heads=("old",)), self.batch, reference=self.original
    )
    np.testing.assert_allclose(metrics_a["loss"], metrics_b["loss"], rtol=1e-6)
    assert float(metrics_a["kl/old"]) == pytest.approx(0.0, abs=1e-6)
    leaves = zip(
      jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params), strict=True
    )
    for a, b in leaves:
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

  def test_feature_penalty(self):
    features = models.forward(
      self.model, self.variables, self.batch["new"]["image"], train=False
    ).features
    batch = {"new": {**self.batch["new"], "recorded_features": np.zeros((8, 64))}}
    _, metrics = self.step(train.Objective(lambda_features=0.5), batch)
    expected = float(np.mean(np.sum(np.asarray(features) ** 2, -1)))
    assert float(metrics["feature_distance"]) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["loss"]) == pytest.approx(
      self.plain_loss() + 0.5 * expected, rel=1e-5
    )

  def test_weight_penalty_on_the_trunk_only(self):
    shifted = jax.tree.map(lambda x: x + 1.0, self.original["params"])
    reference = {**self.original, "params": shifted}
    _, metrics = self.step(train.Objective(lambda_weights=0.1), self.batch, reference)
    trunk_size = sum(x.size for x in jax.tree.leaves(self.original["params"]["trunk"]))
    assert float(metrics["loss"]) == pytest.approx(
      self.plain_loss() + 0.1 * trunk_size, rel=1e-5
    )

  def test_missing_reference_raises_before_training(self):
    state = make_state(self.variables, [".*"])
    with pytest.raises(ValueError, match="needs reference variables"):
      train.train(
        state,
        {"new": self.new.train},
        model=self.model,
        objective=train.Objective(lambda_weights=1.0),
        num_epochs=1,
        batch_size=8,
        rng=jax.random.key(0),
      )
