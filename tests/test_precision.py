"""Mixed precision: bfloat16 trunks with float32 parameters, statistics and heads."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwf_jax import models, train, trunks
from tests import helpers

TRUNK_NAMES = ("mlp_tiny", "cnn_tiny", "resnet18_tiny")


def dtypes(tree):
  return {leaf.dtype for leaf in jax.tree.leaves(tree)}


def shapes_and_dtypes(model, image_shape):
  """The variables ``model.init`` would create, as shapes and dtypes only."""
  init = functools.partial(model.init, train=False)
  return jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, *image_shape)))


def filled(abstract, seed=0):
  """Variables of the given shapes and dtypes, scaled like a fan-in initialiser.

  Compiling ``model.init`` for the tiny ResNet takes XLA's CPU backend over ten
  seconds; ``jax.eval_shape`` and NumPy take milliseconds.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'var'" in name or "'scale'" in name:  # BatchNorm: identity to start
      return np.ones(leaf.shape, leaf.dtype)
    if leaf.ndim < 2:  # biases and running means
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = np.prod(leaf.shape[:-1])
    return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  variables = jax.tree_util.tree_map_with_path(fill, abstract)
  return {
    "params": variables["params"],
    "batch_stats": variables.get("batch_stats", {}),
  }


# One compiled program per network, not one per operation.
forward = jax.jit(models.forward, static_argnames=("model", "train"))


@pytest.fixture(scope="module", params=TRUNK_NAMES)
def bf16_network(request):
  """A bfloat16 network with one head, ``'t'``, on 8x8 RGB images (the tiny
  ResNet's smallest), the variables its init would create, and its task."""
  task = helpers.toy_task("t", num_train=16, num_test=8, shape=(8, 8, 3))
  model = models.MultiHeadNet(
    trunk=trunks.make_trunk(request.param, "bfloat16"),
    head_specs=(models.HeadSpec("t", task.num_classes),),
    image_shape=task.image_shape,
  )
  abstract = shapes_and_dtypes(model, task.image_shape)
  return request.param, task, model, abstract, filled(abstract)


def test_parameters_and_statistics_are_float32(bf16_network):
  name, _, model, abstract, _ = bf16_network
  assert model.trunk.dtype == jnp.bfloat16
  assert dtypes(abstract["params"]) == {jnp.dtype(jnp.float32)}
  if name == "resnet18_tiny":
    assert jax.tree.leaves(abstract["batch_stats"])  # BatchNorm layers exist
    assert dtypes(abstract["batch_stats"]) == {jnp.dtype(jnp.float32)}
  else:
    assert "batch_stats" not in abstract


def test_features_bfloat16_logits_float32_and_close_to_float32(bf16_network):
  name, task, model, _, variables = bf16_network
  images = task.test["image"]
  out = forward(model, variables, images, train=False)
  assert out.features.dtype == jnp.bfloat16
  assert out.logits["t"].dtype == jnp.float32
  # The same parameters computing in float32.
  full = model.clone(trunk=trunks.make_trunk(name))
  reference = forward(full, variables, images, train=False)
  assert reference.features.dtype == jnp.float32
  logits, expected = np.asarray(out.logits["t"]), np.asarray(reference.logits["t"])
  error = np.linalg.norm(logits - expected) / np.linalg.norm(expected)
  assert error < 5e-2
  assert not np.array_equal(logits, expected)  # it did compute in bfloat16


def test_train_steps_are_finite_and_keep_float32_state(bf16_network):
  _, task, model, _, variables = bf16_network
  state = train.create_train_state(
    variables, trainable=(".*",), learning_rate=0.05, dropout_rng=jax.random.key(0)
  )
  step = train.compiled_train_step(model, train.Objective(), 1)
  batch = {"t": task.train}
  start = state.params
  for _ in range(2):
    state, metrics = step(state, batch, None)
    assert metrics["loss"].dtype == jnp.float32
    assert np.isfinite(metrics["loss"])
  assert int(state.step) == 2
  assert dtypes(state.params) == {jnp.dtype(jnp.float32)}
  assert not dtypes(state.batch_stats) - {jnp.dtype(jnp.float32)}
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), state.params, start)
  assert any(jax.tree.leaves(moved))


def test_unknown_dtype_lists_the_valid_ones():
  with pytest.raises(ValueError, match="'float16'; valid dtypes: float32, bfloat16"):
    trunks.make_trunk("mlp_tiny", "float16")
  with pytest.raises(ValueError, match="unknown model 'mlp_huge'"):
    trunks.make_trunk("mlp_huge", "bfloat16")
