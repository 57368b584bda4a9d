"""Export, load and predict: bit-identical to the trained network, loud on bad input."""

import json
import os
import re

import jax
import numpy as np
import pytest

from lwf_jax import export, inference, models, seeds, trunks
from tests import helpers

CLASSES = {"a": (7, 3, 5), "b": (40, 10, 30, 20)}


@pytest.fixture(scope="module")
def network():
  a, b = helpers.toy_task("a"), helpers.toy_task("b", num_classes=4, seed=1)
  return helpers.network(trunks.make_trunk("mlp_tiny"), [a, b])


@pytest.fixture(scope="module")
def exported(network, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("export") / "net")
  export.save(directory, *network, trunk="mlp_tiny", classes=CLASSES)
  return directory


@pytest.fixture(scope="module")
def images():
  return helpers.toy_task("new", num_train=37, seed=2).train["image"]


def _files(directory):
  return sorted(
    os.path.join(root, name) for root, _, names in os.walk(directory) for name in names
  )


def _contents(directory):
  return {path: open(path, "rb").read() for path in _files(directory)}


def test_loaded_network_is_bit_identical(network, exported):
  model, variables = network
  predictor = export.load(exported)
  assert predictor.model == model
  assert predictor.heads == ["a", "b"]
  assert predictor.classes == CLASSES
  assert helpers.bits(predictor.variables) == helpers.bits(variables)


@pytest.mark.parametrize("batch_size", [5, 500])
def test_predictions_equal_inference_mapped_through_classes(
  network, exported, images, batch_size
):
  model, variables = network
  predictor = export.load(exported)
  logits = inference.predict(model, variables, images, batch_size=batch_size).logits
  for task in ("a", "b"):
    got = predictor.logits(images, task, batch_size=batch_size)
    assert got.dtype == np.float32 and got.shape == (37, len(CLASSES[task]))
    assert got.tobytes() == logits[task].tobytes()
    labels = predictor.predict(images, task, batch_size=batch_size)
    expected = np.asarray(CLASSES[task])[np.argmax(logits[task], -1)]
    np.testing.assert_array_equal(labels, expected)
    assert labels.shape == (37,) and set(labels) <= set(CLASSES[task])


def test_default_classes_and_multi_label_heads(network, tmp_path, images):
  model, variables = network
  grown, variables = models.add_head(
    model, variables, models.HeadSpec("tags", 5, multi_label=True), jax.random.key(9)
  )
  export.save(str(tmp_path / "net"), grown, variables, trunk="mlp_tiny")
  predictor = export.load(str(tmp_path / "net"))
  assert predictor.classes == {
    "a": (0, 1, 2),
    "b": (0, 1, 2, 3),
    "tags": tuple(range(5)),
  }
  tags = predictor.predict(images, "tags")
  logits = predictor.logits(images, "tags")
  assert tags.shape == (37, 5)
  np.testing.assert_array_equal(tags, (logits > 0).astype(np.int32))


def test_compute_dtype_defaults_to_the_trunks(tmp_path):
  a = helpers.toy_task("a")
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny", "bfloat16"), [a])
  export.save(str(tmp_path / "net"), model, variables, trunk="mlp_tiny")
  predictor = export.load(str(tmp_path / "net"))
  assert predictor.model == model
  logits = inference.predict(model, variables, a.test["image"], batch_size=8).logits
  assert predictor.logits(a.test["image"], "a").tobytes() == logits["a"].tobytes()


def test_refuses_to_overwrite(network, exported):
  before = _contents(exported)
  with pytest.raises(FileExistsError):
    export.save(exported, *network, trunk="mlp_tiny")
  assert _contents(exported) == before


def test_refuses_a_trunk_that_does_not_rebuild_the_network(network, tmp_path):
  for trunk, dtype in (("mlp", None), ("cnn_tiny", None), ("mlp_tiny", "bfloat16")):
    with pytest.raises(ValueError, match="does not rebuild"):
      export.save(str(tmp_path / "net"), *network, trunk=trunk, compute_dtype=dtype)
  with pytest.raises(ValueError, match="unknown model"):
    export.save(str(tmp_path / "net"), *network, trunk="nope")
  assert not os.path.exists(tmp_path / "net")


@pytest.mark.parametrize(
  "classes, message",
  [
    ({"a": (7, 3)}, "has 3 classes"),
    ({"a": (7, 3, 3)}, "repeat"),
    ({"c": (0, 1)}, r"classes for \['c'\]"),
  ],
)
def test_refuses_classes_that_do_not_fit(network, tmp_path, classes, message):
  with pytest.raises(ValueError, match=message):
    export.save(str(tmp_path / "net"), *network, trunk="mlp_tiny", classes=classes)


def test_refuses_stacked_seeds(network, tmp_path):
  model, variables = network
  stacked = seeds.stack([variables, variables])
  with pytest.raises(ValueError, match=r"seed axis of 2 seeds.*seeds\.take"):
    export.save(str(tmp_path / "net"), model, stacked, trunk="mlp_tiny")
  export.save(str(tmp_path / "net"), model, seeds.take(stacked, 1), trunk="mlp_tiny")


def test_refuses_variables_of_another_network(network, tmp_path):
  model, _ = network
  other = helpers.network(trunks.make_trunk("mlp_tiny"), [helpers.toy_task("a")])[1]
  with pytest.raises(ValueError, match="do not match"):
    export.save(str(tmp_path / "net"), model, other, trunk="mlp_tiny")


def test_missing_directory_names_it(tmp_path):
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / "none"))):
    export.load(str(tmp_path / "none"))


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip"])
def test_damaged_export_names_the_directory(network, tmp_path, damage):
  directory = str(tmp_path / "net")
  export.save(directory, *network, trunk="mlp_tiny", classes=CLASSES)
  # The largest file holds the arrays; the metadata's is JSON.
  for path in (max(_files(directory), key=os.path.getsize), _metadata(directory)):
    os.replace(path, path + ".bak")
    data = bytearray(open(path + ".bak", "rb").read())
    if damage == "truncate":
      with open(path, "wb") as f:
        f.write(data[:10])
    if damage == "flip":  # one byte changed: read as other numbers but for digests
      data[len(data) // 2] ^= 0xFF
      with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(ValueError, match=re.escape(directory)):
      export.load(directory)
    os.replace(path + ".bak", path)
  export.load(directory)  # repaired


def _metadata(directory):
  return os.path.join(directory, "metadata", "metadata")


@pytest.mark.parametrize(
  "edit, message",
  [
    (lambda m: m.update(format="something else"), "format"),
    (lambda m: m.update(version=99), "version 99"),
    (lambda m: m.update(trunk="cnn_tiny"), "do not match"),
    (lambda m: m["heads"][0].update(classes=[1, 2]), "has 3 classes"),
    (lambda m: m.pop("image_dtype"), "image_dtype"),
  ],
)
def test_unknown_or_inconsistent_metadata_names_the_directory(
  network, tmp_path, edit, message
):
  directory = str(tmp_path / "net")
  export.save(directory, *network, trunk="mlp_tiny", classes=CLASSES)
  with open(_metadata(directory)) as f:
    metadata = json.load(f)
  edit(metadata)
  with open(_metadata(directory), "w") as f:
    json.dump(metadata, f)
  with pytest.raises(ValueError, match=f"{re.escape(directory)}.*{message}"):
    export.load(directory)


@pytest.mark.parametrize(
  "bad, task, message",
  [
    (np.zeros((2, 4, 4, 1), np.float32), "c", r"no head for task 'c'.*\['a', 'b'\]"),
    (np.zeros((2, 4, 4, 3), np.float32), "a", "do not fit the network"),
    (np.zeros((2, 3, 3, 1), np.float32), "a", "do not fit the network"),
    (np.zeros((2, 16), np.float32), "a", "do not fit the network"),
    (np.full((2, 4, 4, 1), np.nan, np.float32), "a", "NaN or Inf"),
    (np.full((2, 4, 4, 1), np.inf, np.float32), "b", "NaN or Inf"),
    (np.zeros((2, 4, 4, 1), np.uint8), "a", "reads float images"),
  ],
)
def test_bad_input_raises_before_compute(exported, bad, task, message, monkeypatch):
  predictor = export.load(exported)
  monkeypatch.setattr(inference, "predict", None)  # any compute would fail
  with pytest.raises(ValueError, match=message):
    predictor.predict(bad, task)


def test_uint8_export_reads_only_uint8(network, tmp_path):
  export.save(str(tmp_path / "net"), *network, trunk="mlp_tiny", image_dtype="uint8")
  predictor = export.load(str(tmp_path / "net"))
  images = np.arange(2 * 16, dtype=np.uint8).reshape(2, 4, 4, 1)
  model, variables = network
  logits = model.apply(variables, images, train=False)["a"]
  np.testing.assert_allclose(
    predictor.logits(images, "a"), logits, rtol=1e-6, atol=1e-6
  )
  with pytest.raises(ValueError, match="reads uint8 images"):
    predictor.predict(images.astype(np.float32) / 255, "a")
