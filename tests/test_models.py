"""Trunks, heads, head growth and per-head logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwf_jax import models
from tests import helpers


@pytest.mark.parametrize("name", sorted(models.TRUNKS))
def test_trunks_map_images_to_features(name):
  trunk = models.make_trunk(name)
  _, variables = models.init_trunk(trunk, jax.random.key(0), (28, 28, 1))
  features = trunk.apply(
    {"params": variables["params"]["trunk"]}, jnp.ones((3, 28, 28, 1)), train=False
  )
  assert features.shape == (3, trunk.num_features)
  assert set(variables["params"]) == {"trunk"}


def test_features_are_the_trunk_output():
  trunk = models.make_trunk("mlp_tiny")
  model, variables = models.init_trunk(trunk, jax.random.key(0), (4, 4, 1))
  images = jax.random.normal(jax.random.key(1), (3, 4, 4, 1))
  expected = trunk.apply({"params": variables["params"]["trunk"]}, images, train=False)
  out = models.forward(model, variables, images, train=False)
  np.testing.assert_array_equal(out.features, expected)
  assert out.logits == {}


def test_parameter_counts():
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  _, mlp = models.init_trunk(models.make_trunk("mlp"), jax.random.key(0), (28, 28, 1))
  assert count(mlp) == 784 * 400 + 400 + 400 * 400 + 400
  _, cnn = models.init_trunk(models.make_trunk("cnn"), jax.random.key(0), (28, 28, 1))
  convs = (9 * 1 * 16 + 16) + (9 * 16 * 32 + 32)
  assert count(cnn) == convs + (7 * 7 * 32 * 256 + 256) + (256 * 256 + 256)


def test_cnn_rejects_images_it_would_pool_away():
  with pytest.raises(ValueError, match="at least 4x4 pixels, got 2x2"):
    models.init_trunk(models.make_trunk("cnn"), jax.random.key(0), (2, 2, 1))


def test_unknown_trunk_lists_valid_names():
  with pytest.raises(ValueError, match="valid models: mlp, cnn"):
    models.make_trunk("alexnet9000")


class TestAddHead:
  def setup_method(self):
    self.model, self.variables = models.init_trunk(
      models.make_trunk("mlp_tiny"), jax.random.key(0), (4, 4, 1)
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
    assert grown.head_specs == (("old", 3, ()), ("new", 5, ()))
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
    model, variables = helpers.network(models.make_trunk("cnn_tiny"), [task])
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
