"""Trunks, heads, head growth and per-head logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwf_jax import models, trunks
from tests import helpers

# One image's shape per trunk: what each network is built for.
IMAGE_SHAPES = {
  "mlp": (28, 28, 1),
  "cnn": (28, 28, 1),
  "alexnet": (227, 227, 3),
  "vgg16": (224, 224, 3),
  "resnet18": (32, 32, 3),
  "resnet32": (32, 32, 3),
  "mlp_tiny": (4, 4, 1),
  "cnn_tiny": (4, 4, 1),
  "alexnet_tiny": (67, 67, 3),
  "vgg16_tiny": (32, 32, 3),
  "resnet18_tiny": (8, 8, 3),
  "resnet32_tiny": (8, 8, 3),
}
# Parameter counts of the trunks (everything but the classifier), from the
# networks' definitions: bvlc_alexnet's 60,965,224 and VGG-16's 138,357,544 minus
# fc8 (4096 * 1000 + 1000); CIFAR ResNet-18's 11,173,962 and ResNet-32's 464,154
# minus their 10-way classifiers (5,130 and 650).
PARAMETER_COUNTS = {
  "mlp": 784 * 400 + 400 + 400 * 400 + 400,
  "cnn": (9 * 16 + 16) + (9 * 16 * 32 + 32) + (7 * 7 * 32 * 256 + 256) + (256 * 257),
  "alexnet": 60_965_224 - 4_097_000,
  "vgg16": 138_357_544 - 4_097_000,
  "resnet18": 11_173_962 - 5_130,
  "resnet32": 464_154 - 650,
}


def count(tree) -> int:
  return sum(np.prod(x.shape) for x in jax.tree.leaves(tree))


def test_every_trunk_has_a_shape_here():
  assert set(IMAGE_SHAPES) == set(trunks.TRUNKS)


@pytest.mark.parametrize("name", sorted(PARAMETER_COUNTS))
def test_full_size_trunks_parameter_counts_and_features(name):
  trunk = trunks.make_trunk(name)
  shape = IMAGE_SHAPES[name]
  # Shapes only: no memory for VGG-16's 134M parameters, no FLOPs.
  variables = jax.eval_shape(
    lambda: trunk.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
  )
  assert count(variables["params"]) == PARAMETER_COUNTS[name]
  features = jax.eval_shape(
    lambda v: trunk.apply(v, jnp.zeros((2, *shape)), train=False), variables
  )
  assert features.shape == (2, trunk.num_features)


@pytest.mark.parametrize(
  "name", sorted(n for n in trunks.TRUNKS if n.endswith("_tiny"))
)
def test_tiny_trunks_run_forward_and_backward(name):
  trunk = trunks.make_trunk(name)
  model, variables = models.init_trunk(trunk, jax.random.key(0), IMAGE_SHAPES[name])
  model, variables = models.add_head(
    model, variables, models.HeadSpec("t", 3), jax.random.key(1)
  )
  images = jax.random.normal(jax.random.key(2), (4, *IMAGE_SHAPES[name]))

  def loss(params):
    out = models.forward(
      model,
      {**variables, "params": params},
      images,
      train=True,
      dropout_rng=jax.random.key(3),
    )
    return jnp.sum(out.logits["t"] ** 2), out

  grads, out = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
  assert out.features.shape == (4, trunk.num_features)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert any(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads["trunk"]))
  if "resnet" in name:  # BatchNorm statistics move in training mode only
    assert helpers.bits(out.batch_stats) != helpers.bits(variables["batch_stats"])


def test_frozen_trunk_runs_in_inference_mode():
  model, variables = models.init_trunk(
    trunks.make_trunk("resnet32_tiny"), jax.random.key(0), (8, 8, 3)
  )
  images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  inference = models.forward(model, variables, images, train=False)
  frozen = models.forward(model, variables, images, train=True, train_trunk=False)
  np.testing.assert_array_equal(frozen.features, inference.features)
  assert helpers.bits(frozen.batch_stats) == helpers.bits(variables["batch_stats"])


def test_local_response_norm_by_hand():
  x = jnp.arange(1.0, 7.0).reshape(1, 1, 1, 6)
  y = trunks.local_response_norm(x, size=3, alpha=3.0, beta=1.0, k=1.0)
  # Channel 0 sees channels 0 and 1 (zero-padded): 1 / (1 + (1 + 4)) = 1 / 6.
  window = np.array([1 + 4, 1 + 4 + 9, 4 + 9 + 16, 9 + 16 + 25, 16 + 25 + 36, 25 + 36])
  np.testing.assert_allclose(y.ravel(), np.arange(1, 7) / (1 + window), rtol=1e-6)


def test_features_are_the_trunk_output():
  trunk = trunks.make_trunk("mlp_tiny")
  model, variables = models.init_trunk(trunk, jax.random.key(0), (4, 4, 1))
  images = jax.random.normal(jax.random.key(1), (3, 4, 4, 1))
  expected = trunk.apply({"params": variables["params"]["trunk"]}, images, train=False)
  out = models.forward(model, variables, images, train=False)
  np.testing.assert_array_equal(out.features, expected)
  assert out.logits == {}


def test_cnn_rejects_images_it_would_pool_away():
  with pytest.raises(ValueError, match="at least 4x4 pixels, got 2x2"):
    models.init_trunk(trunks.make_trunk("cnn"), jax.random.key(0), (2, 2, 1))


def test_unknown_trunk_lists_valid_names():
  with pytest.raises(ValueError, match="valid models: mlp, cnn"):
    trunks.make_trunk("alexnet9000")


class TestAddHead:
  def setup_method(self):
    self.model, self.variables = models.init_trunk(
      trunks.make_trunk("mlp_tiny"), jax.random.key(0), (4, 4, 1)
    )
    self.model, self.variables = models.add_head(
      self.model, self.variables, models.HeadSpec("old", 3), jax.random.key(1)
    )

  def test_tree_names_trunk_and_heads(self):
    grown, variables = models.add_head(
      self.model, self.variables, models.HeadSpec("new", 5), jax.random.key(2)
    )
    params = variables["params"]
    assert set(params) == {"trunk", "heads"}
    assert list(params["heads"]) == ["old", "new"]
    assert params["heads"]["new"]["out"]["kernel"].shape == (64, 5)
    assert grown.head_specs == (
      models.HeadSpec("old", 3),
      models.HeadSpec("new", 5, (), multi_label=False),
    )
    assert grown.head_names == ["old", "new"]

  def test_hidden_layers_in_a_head(self):
    grown, variables = models.add_head(
      self.model, self.variables, models.HeadSpec("new", 5, (7,)), jax.random.key(2)
    )
    head = variables["params"]["heads"]["new"]
    assert head["fc1"]["kernel"].shape == (64, 7)
    assert head["out"]["kernel"].shape == (7, 5)
    logits = models.forward(
      grown, variables, jnp.ones((2, 4, 4, 1)), train=False
    ).logits
    assert logits["new"].shape == (2, 5) and logits["old"].shape == (2, 3)

  def test_existing_leaves_bit_identical_and_input_untouched(self):
    before = helpers.bits(self.variables)
    _, grown = models.add_head(
      self.model, self.variables, models.HeadSpec("new", 5), jax.random.key(2)
    )
    kept = {"trunk": grown["params"]["trunk"], "old": grown["params"]["heads"]["old"]}
    original = self.variables["params"]
    assert helpers.bits(kept) == helpers.bits(
      {"trunk": original["trunk"], "old": original["heads"]["old"]}
    )
    assert helpers.bits(self.variables) == before
    assert list(self.variables["params"]["heads"]) == ["old"]

  def test_old_heads_outputs_unchanged_by_growth(self):
    images = jax.random.normal(jax.random.key(3), (6, 4, 4, 1))
    before = models.forward(self.model, self.variables, images, train=False).logits
    grown, variables = models.add_head(
      self.model, self.variables, models.HeadSpec("new", 5), jax.random.key(2)
    )
    after = models.forward(grown, variables, images, train=False).logits
    assert helpers.bits(after["old"]) == helpers.bits(before["old"])
    assert after["new"].shape == (6, 5)

  def test_duplicate_name_or_single_class_raise(self):
    with pytest.raises(ValueError, match="already has a head named 'old'"):
      models.add_head(
        self.model, self.variables, models.HeadSpec("old", 3), jax.random.key(2)
      )
    with pytest.raises(ValueError, match="at least 2 classes"):
      models.add_head(
        self.model, self.variables, models.HeadSpec("new", 1), jax.random.key(2)
      )
    with pytest.raises(ValueError, match="without '/'"):
      models.add_head(
        self.model, self.variables, models.HeadSpec("old/x", 3), jax.random.key(2)
      )


class TestHeadLogits:
  def test_inference_mode_is_deterministic_training_mode_uses_dropout(self):
    task = helpers.toy_task("t")
    model, variables = helpers.network(trunks.make_trunk("cnn_tiny"), [task])
    images = jnp.asarray(task.train["image"][:8])
    a = models.forward(model, variables, images, train=False)
    b = models.forward(model, variables, images, train=False)
    np.testing.assert_array_equal(a.logits["t"], b.logits["t"])
    np.testing.assert_array_equal(a.features, b.features)
    assert a.features.shape == (8, model.trunk.num_features)
    c = models.forward(
      model, variables, images, train=True, dropout_rng=jax.random.key(0)
    )
    d = models.forward(
      model, variables, images, train=True, dropout_rng=jax.random.key(1)
    )
    assert not np.allclose(c.logits["t"], d.logits["t"])

  def test_batch_stats_updated_only_in_training_mode(self):
    task = helpers.toy_task("t")
    model, variables = helpers.network(helpers.BatchNormTrunk(), [task])
    images = jnp.asarray(task.train["image"][:8]) * 5 + 1
    stats = models.forward(model, variables, images, train=False).batch_stats
    assert helpers.bits(stats) == helpers.bits(variables["batch_stats"])
    stats = models.forward(
      model, variables, images, train=True, dropout_rng=jax.random.key(0)
    ).batch_stats
    assert helpers.bits(stats) != helpers.bits(variables["batch_stats"])
