"""Recording (LwF step 1) and evaluation: inference mode, padding, no state change."""

import jax
import numpy as np
import pytest

from lwf_jax import inference, trunks
from tests import helpers


@pytest.fixture(scope="module")
def bn_network():
  old_a, old_b = helpers.toy_task("a"), helpers.toy_task("b", num_classes=4)
  model, variables = helpers.network(helpers.BatchNormTrunk(), [old_a, old_b])
  # Running statistics different from their initial values, as after training.
  stats = jax.tree.map(lambda x: x + 0.7, variables["batch_stats"])
  return model, {**variables, "batch_stats": stats}


@pytest.mark.parametrize("batch_size", [1, 7, 48, 500])
def test_recording_equals_inference_mode_apply(bn_network, batch_size):
  model, variables = bn_network
  images = helpers.toy_task("new", num_train=37).train["image"]
  before = helpers.bits(variables)
  recorded = inference.record_outputs(
    model, variables, images, heads=["a", "b"], batch_size=batch_size
  )
  expected = model.apply(variables, images, train=False)
  assert set(recorded) == {"a", "b"}
  for head in ("a", "b"):
    assert recorded[head].shape == (37, {"a": 3, "b": 4}[head])
    np.testing.assert_allclose(recorded[head], expected[head], rtol=1e-6, atol=1e-6)
  assert helpers.bits(variables) == before


def test_recording_rows_belong_to_their_images(bn_network):
  model, variables = bn_network
  images = helpers.toy_task("new", num_train=37).train["image"]
  perm = np.random.default_rng(0).permutation(37)
  full = inference.record_outputs(model, variables, images, heads=["a"], batch_size=8)
  shuffled = inference.record_outputs(
    model, variables, images[perm], heads=["a"], batch_size=8
  )
  np.testing.assert_allclose(shuffled["a"], full["a"][perm], rtol=1e-6, atol=1e-6)


def test_recording_unknown_head_raises(bn_network):
  model, variables = bn_network
  with pytest.raises(ValueError, match=r"cannot record heads \['c'\]"):
    inference.record_outputs(
      model, variables, np.zeros((2, 4, 4, 1), np.float32), heads=["c"], batch_size=2
    )


def test_predict_gives_features_of_every_row(bn_network):
  model, variables = bn_network
  images = helpers.toy_task("new", num_train=37).train["image"]
  _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
  prediction = inference.predict(model, variables, images, batch_size=10)
  np.testing.assert_allclose(
    prediction.features, state["intermediates"]["features"][0], rtol=1e-6, atol=1e-6
  )


def test_evaluate_counts_only_real_examples_in_both_scenarios():
  a = helpers.toy_task("a", num_test=10)
  b = helpers.toy_task("b", num_classes=4, num_test=10, seed=1)
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), [a, b])
  logits = model.apply(variables, b.test["image"], train=False)
  task_il = np.mean(np.argmax(logits["b"], -1) == b.test["label"])
  combined = np.concatenate([logits["a"], logits["b"]], -1)
  class_il = np.mean(np.argmax(combined, -1) == b.test["label"] + 3)
  for batch_size in (3, 4, 10, 64):
    scores = inference.evaluate(model, variables, b, batch_size=batch_size)
    assert scores["task_il"] == pytest.approx(task_il)
    assert scores["class_il"] == pytest.approx(class_il)
