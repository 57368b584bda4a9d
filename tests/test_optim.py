"""Freeze masks: frozen leaves stay bit-identical whatever momentum and decay do."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwf_jax import optim
from tests import helpers

PARAMS = {
  "trunk": {"fc1": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}},
  "heads": {
    # -0.0 and a subnormal: p + 0.0 would change their bits.
    "old": {"kernel": jnp.ones((3, 2)), "bias": jnp.array([-0.0, 1e-40])},
    "new": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
  },
}


def test_param_paths():
  assert optim.param_paths(PARAMS)["heads"]["old"]["kernel"] == "heads/old/kernel"


def test_trainable_labels():
  labels = optim.trainable_labels(PARAMS, ["trunk/", "heads/new/"])
  assert labels["trunk"]["fc1"]["bias"] == "trainable"
  assert labels["heads"]["new"]["kernel"] == "trainable"
  assert labels["heads"]["old"]["kernel"] == "frozen"


def test_pattern_matching_nothing_raises():
  with pytest.raises(ValueError, match="'heads/nwe/' matches no parameter"):
    optim.trainable_labels(PARAMS, ["heads/nwe/"])


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_frozen_leaves_bit_identical_after_steps(momentum):
  tx = optim.make_optimizer(
    trainable=("heads/new/",), learning_rate=0.1, momentum=momentum, weight_decay=0.5
  )
  params, state = PARAMS, tx.init(PARAMS)
  step = jax.jit(lambda p, u: optim.apply_updates(p, u, ["heads/new/"]))
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  for _ in range(5):
    updates, state = tx.update(grads, state, params)
    params = step(params, updates)
  frozen = {"trunk": params["trunk"], "old": params["heads"]["old"]}
  assert helpers.bits(frozen) == helpers.bits(
    {"trunk": PARAMS["trunk"], "old": PARAMS["heads"]["old"]}
  )
  # The trainable head moved by SGD with decay and momentum, computed by hand:
  # g = 1 + 0.5 p; v = momentum v + g; p -= 0.1 v.
  p, v = 1.0, 0.0
  for _ in range(5):
    v = momentum * v + (1.0 + 0.5 * p)
    p -= 0.1 * v
  np.testing.assert_allclose(params["heads"]["new"]["kernel"], p, rtol=1e-6)


def test_adam_frozen_leaves_and_update():
  tx = optim.make_optimizer(
    trainable=("heads/new/",), learning_rate=0.1, optimizer="adam", weight_decay=0.0
  )
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, PARAMS), tx.init(PARAMS), PARAMS)
  params = optim.apply_updates(PARAMS, updates, ("heads/new/",))
  # Adam's first step moves by the learning rate in the gradient's direction.
  np.testing.assert_allclose(params["heads"]["new"]["kernel"], 0.9, rtol=1e-6)
  assert helpers.bits(params["heads"]["old"]) == helpers.bits(PARAMS["heads"]["old"])


def test_same_settings_same_optimizer_object():
  make = lambda lr: optim.make_optimizer(trainable=(".*",), learning_rate=lr)
  assert make(0.1) is make(0.1) and make(0.1) is not make(0.2)


def test_unknown_optimizer_lists_valid_ones():
  with pytest.raises(ValueError, match="valid optimizers: sgd, adam"):
    optim.make_optimizer(trainable=(".*",), learning_rate=0.1, optimizer="rmsprop")
