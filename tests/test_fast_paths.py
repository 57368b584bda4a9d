"""Epochs as one scan, seeds as one vmapped program: the same training, faster."""

import chex
import jax
import numpy as np
import pytest

from lwf_jax import inference, seeds, train, trunks
from tests import helpers


def lwf_setup(seed=0):
  """A two-head network with dropout and BatchNorm, and LwF data for the new head."""
  old, new = helpers.toy_task("old"), helpers.toy_task("new", num_classes=4, seed=1)
  model, variables = helpers.network(helpers.BatchNormTrunk(16), [old, new], seed)
  recorded = inference.predict(model, variables, new.train["image"], batch_size=48)
  data = {"new": {**new.train, "recorded": {"old": recorded.logits["old"]}}}
  return model, variables, data


def make_state(variables, seed=0):
  return train.create_train_state(
    variables,
    trainable=(".*",),
    learning_rate=0.05,
    dropout_rng=jax.random.key(seed),
  )


def run(model, state, data, **kwargs):
  settings = {
    "model": model,
    "objective": train.Objective(),
    "num_epochs": 3,
    "batch_size": 8,
    "rng": jax.random.key(7),
    **kwargs,
  }
  return train.train(state, data, **settings)


def leaves(state):
  return jax.tree.leaves((state.params, state.batch_stats, state.opt_state))


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("num_devices", [1, 4])
def test_scanned_epochs_take_the_loops_steps(num_devices):
  model, variables, data = lwf_setup()
  looped, loop_metrics = run(
    model, make_state(variables), data, scan_epochs=False, num_devices=num_devices
  )
  scanned, scan_metrics = run(
    model, make_state(variables), data, scan_epochs=True, num_devices=num_devices
  )
  assert int(scanned.step) == int(looped.step) == 3 * (48 // 8)
  assert_trees_close(leaves(scanned), leaves(looped))
  assert scan_metrics.keys() == loop_metrics.keys()
  for name, value in loop_metrics.items():
    np.testing.assert_allclose(scan_metrics[name], value, rtol=1e-5, atol=1e-6)


def seed_states(variables_per_seed):
  states = [make_state(v, seed) for seed, v in enumerate(variables_per_seed)]
  return states, seeds.stack(states)


def seed_data(data_per_seed):
  """One split, with each seed's recordings stacked on a leading axis."""
  recorded = seeds.stack([data["new"]["recorded"] for data in data_per_seed])
  return {"new": {**data_per_seed[0]["new"], "recorded": recorded}}


@pytest.mark.parametrize("num_devices", [2])  # one device: tests/test_seeds.py
def test_vmapped_seeds_equal_sequential_runs(num_devices):
  setups = [lwf_setup(seed) for seed in range(2)]
  model = setups[0][0]
  states, stacked = seed_states([v for _, v, _ in setups])
  rngs = jax.random.split(jax.random.key(11), 2)
  data = seed_data([d for _, _, d in setups])
  together, metrics = run(
    model, stacked, data, rng=rngs, num_seeds=2, num_devices=num_devices, num_epochs=2
  )
  assert metrics["loss"].shape == (2,)
  first, second = (seeds.take(together.params, s) for s in (0, 1))
  assert helpers.bits(first) != helpers.bits(second)
  for seed, state in enumerate(states):
    alone, alone_metrics = run(
      model,
      state,
      setups[seed][2],
      rng=rngs[seed],
      scan_epochs=True,
      num_devices=num_devices,
      num_epochs=2,
    )
    assert_trees_close(leaves(seeds.take(together, seed)), leaves(alone))
    np.testing.assert_allclose(metrics["loss"][seed], alone_metrics["loss"], 1e-5)


@pytest.mark.parametrize("scan_epochs", [False, True])
def test_one_compilation_per_task_shape(monkeypatch, scan_epochs):
  """Two stages of one shape (other seeds, other states) trace the step once."""
  chex.clear_trace_counter()
  monkeypatch.setattr(
    train, "train_step", chex.assert_max_traces(train.train_step, n=1)
  )
  train.compiled_train_step.cache_clear()
  train.compiled_train_epoch.cache_clear()
  task = helpers.toy_task("t")
  for seed in range(2):
    model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), [task], seed)
    run(
      model,
      make_state(variables, seed),
      {"t": task.train},
      rng=jax.random.key(seed),
      scan_epochs=scan_epochs,
    )
  train.compiled_train_step.cache_clear()
  train.compiled_train_epoch.cache_clear()


def test_small_data_scan_by_default_large_data_loop():
  data = {"t": {"image": np.zeros((10, 4), np.float32)}}
  assert train.fits_on_devices(data, 8)
  big = {"t": {"image": np.zeros((1, 1), np.float32)}}
  big["t"]["image"] = np.broadcast_to(big["t"]["image"], (train.SCAN_MAX_BYTES, 1))
  assert not train.fits_on_devices(big, 1)


@pytest.mark.parametrize(
  "stacked, kwargs, message",
  [
    (True, {"num_seeds": 2, "scan_epochs": False}, "num_seeds needs epochs as scans"),
    (True, {"num_seeds": 3}, "leading axis of 3"),
    (True, {"num_seeds": -1}, "num_seeds must be >= 0"),
    (False, {}, "one PRNG key expected"),
  ],
)
def test_bad_seed_arguments_raise_before_training(stacked, kwargs, message):
  model, variables, data = lwf_setup()
  state = seed_states([variables, variables])[1] if stacked else make_state(variables)
  data = seed_data([data, data]) if stacked else data
  rngs = jax.random.split(jax.random.key(0), 2)
  with pytest.raises(ValueError, match=message):
    run(model, state, data, rng=rngs, **kwargs)


@pytest.mark.parametrize("trunk, scans", [("mlp_tiny", True), ("cnn_tiny", False)])
def test_on_a_cpu_only_networks_without_convolutions_scan(trunk, scans):
  task = helpers.toy_task("t", shape=(8, 8, 1))
  model, _ = helpers.network(trunks.make_trunk(trunk), [task])
  assert train.scans_fast(model) is scans
