"""Tasks and the offline data sets: splits, label mapping, and bad input."""

import numpy as np
import pytest

from lwf_jax import datasets, tasks
from tests import helpers


def split(labels, shape=(2, 2, 1)):
  labels = np.asarray(labels, dtype=np.int64)
  return {"image": np.zeros((len(labels), *shape), np.float32), "label": labels}


class TestMakeTask:
  def test_labels_mapped_into_head_order(self):
    task = tasks.make_task("pair", (7, 3), split([3, 7, 7]), split([7, 3]))
    np.testing.assert_array_equal(task.train["label"], [1, 0, 0])
    np.testing.assert_array_equal(task.test["label"], [0, 1])
    assert task.train["label"].dtype == np.int32
    assert task.num_classes == 2 and task.image_shape == (2, 2, 1)

  @pytest.mark.parametrize(
    "train, test, message",
    [
      (split([0, 1, 2]), split([0, 1]), r"train split: labels \[2\] are outside"),
      (split([0, 1]), split([0, -1]), r"test split: labels \[-1\] are outside"),
      (split([]), split([0, 1]), "the split is empty"),
      ({**split([0, 1]), "label": np.array([0.0, 1.0])}, split([0]), "integer"),
      ({**split([0, 1]), "image": np.zeros((2, 4))}, split([0]), "height, width"),
      (
        {**split([0, 1]), "image": np.zeros((2, 2, 2, 1), np.float64)},
        split([0]),
        "float32",
      ),
      (
        {**split([0, 1]), "image": np.full((2, 2, 2, 1), np.nan, np.float32)},
        split([0]),
        "NaN or Inf",
      ),
      (
        {**split([0, 1]), "image": np.full((2, 2, 2, 1), np.inf, np.float32)},
        split([0]),
        "NaN or Inf",
      ),
      ({**split([0, 1]), "label": np.array([0, 1, 1])}, split([0]), "differ in length"),
      (
        {**split([0, 1]), "recorded": {"old": np.zeros((5, 3), np.float32)}},
        split([0]),
        "differ in length",
      ),
      ({**split([0, 1]), "image": [[[[0.0]]]] * 2}, split([0]), "NumPy arrays"),
      (
        {"image": np.zeros((2, 2, 2, 1), np.float32)},
        split([0]),
        "'image' and 'label'",
      ),
      (split([0, 1]), split([0], shape=(3, 3, 1)), "differ in shape"),
    ],
  )
  def test_bad_input_raises(self, train, test, message):
    with pytest.raises(ValueError, match=message):
      tasks.make_task("bad", (0, 1), train, test)

  @pytest.mark.parametrize(
    "classes, message",
    [
      ((0,), "at least 2 classes"),
      ((0, 0), "repeat"),
      ((0.0, 1.5), "integers"),
      (("0", "1"), "integers"),
      ((False, True), "integers"),
      ((0, 1.0), "integers"),
      (([1], [2]), "integers"),
      (7, "sequence of integers"),
      ("01", "sequence of integers"),
    ],
  )
  def test_bad_classes_raise(self, classes, message):
    with pytest.raises(ValueError, match=message):
      tasks.make_task("t", classes, split([0]), split([0]))

  @pytest.mark.parametrize("name", ["", "a/b", 3, None])
  def test_bad_names_raise(self, name):
    # A '/' would let one head's freeze pattern (heads/a/) match another's (a/b).
    with pytest.raises(ValueError, match="task name"):
      tasks.make_task(name, (0, 1), split([0, 1]), split([0]))

  def test_numpy_integer_classes_accepted(self):
    task = tasks.make_task("t", np.array([4, 2]), split([2, 4]), split([4]))
    assert task.classes == (4, 2) and isinstance(task.classes[0], int)

  def test_task_sequence_checks(self):
    a = tasks.make_task("a", (0, 1), split([0, 1]), split([0]))
    b = tasks.make_task("b", (0, 1), split([0, 1], (3, 3, 1)), split([0], (3, 3, 1)))
    with pytest.raises(ValueError, match="distinct"):
      tasks.check_task_sequence([a, a])
    with pytest.raises(ValueError, match="one image shape"):
      tasks.check_task_sequence([a, b])


def test_split_every_nth_is_stratified_and_ordered():
  labels = np.array([0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 1])
  train, test = datasets.split_every_nth(labels, n=2)
  # Class 0 at positions 0 2 4 5 8 -> test 2 5; class 1 at 1 3 6 7 9 10 11 -> 3 7 10.
  np.testing.assert_array_equal(test, [2, 3, 5, 7, 10])
  np.testing.assert_array_equal(train, [0, 1, 4, 6, 8, 9, 11])


@pytest.mark.parametrize(
  "name, train_size, test_size", [("mnist5k", 4000, 1000), ("uci_digits", 1442, 355)]
)
def test_offline_data_sets(name, train_size, test_size):
  task = datasets.load_task(name)
  assert (len(task.train["label"]), len(task.test["label"])) == (train_size, test_size)
  assert task.image_shape == (28, 28, 1) and task.num_classes == 10
  for part in (task.train, task.test):
    assert part["image"].dtype == np.float32
    assert 0.0 <= part["image"].min() and part["image"].max() <= 1.0
    assert part["image"].max() > 0.9  # real, scaled images, not blank ones
    assert np.all(np.bincount(part["label"], minlength=10) > 0)
  if name == "mnist5k":
    assert np.all(np.bincount(task.train["label"]) == 400)
  # No test image is also a training image.
  train = {image.tobytes() for image in task.train["image"]}
  assert not any(image.tobytes() in train for image in task.test["image"])


def test_load_task_classes_and_subsets():
  task = datasets.load_task("mnist5k", name="two_three", classes=(3, 2))
  assert task.name == "two_three" and task.classes == (3, 2)
  assert set(np.unique(task.train["label"])) == {0, 1}
  assert len(task.test["label"]) == 200
  small = datasets.load_task("uci_digits", max_train_per_class=5)
  assert np.all(np.bincount(small.train["label"]) == 5)
  assert len(small.test["label"]) == 355


def test_load_task_bad_names_raise():
  with pytest.raises(ValueError, match="valid data sets: mnist5k, uci_digits"):
    datasets.load_task("cifar10000")
  with pytest.raises(ValueError, match=r"no examples of classes \[10\]"):
    datasets.load_task("mnist5k", classes=(1, 10))


@pytest.mark.parametrize("classes", [[[1], [2]], [1, 1], [3], 5, ["1", "2"]])
def test_load_task_bad_classes_raise_value_error(classes):
  with pytest.raises(ValueError, match="data set 'uci_digits'"):
    datasets.load_task("uci_digits", classes=classes)


def test_take_shard_keeps_every_count_th_example_of_both_splits():
  task = helpers.toy_task("t", num_train=7, num_test=5)
  shards = [tasks.take_shard(task, i, 3) for i in range(3)]
  assert [len(s.train["label"]) for s in shards] == [3, 2, 2]
  np.testing.assert_array_equal(shards[1].train["image"], task.train["image"][1::3])
  np.testing.assert_array_equal(shards[2].test["label"], task.test["label"][2::3])
  assert tasks.take_shard(task, 0, 1) is task
  with pytest.raises(ValueError, match="too few examples for 6 shards"):
    tasks.take_shard(task, 5, 6)
