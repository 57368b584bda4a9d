"""Tests of the TFDS catalog and the image-folder loader, on mocked and tiny data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from lwf_jax import catalog, datasets, tasks


class Source:
  """A data source of hand-made records; counts the records it is asked for."""

  def __init__(self, records, batched=True):
    self.records = records
    self.reads = 0
    if batched:
      self.__getitems__ = self._getitems

  def __len__(self):
    return len(self.records)

  def __getitem__(self, key):
    self.reads += 1
    return self.records[key]

  def _getitems(self, keys):
    self.reads += len(keys)
    return [self.records[key] for key in keys]


def constant_image(value, height, width, channels=3):
  """An image whose every pixel is ``value``: it survives resizing exactly."""
  return np.full((height, width, channels), value, np.uint8)


def mock_sources(sources):
  """``mock_data`` serving ``sources[split]`` for every data set."""

  def as_data_source(self, split, **kwargs):
    del self, kwargs
    return sources[split]

  return tfds.testing.mock_data(as_data_source_fn=as_data_source)


@pytest.mark.parametrize("dataset", list(catalog.CATALOG))
def test_every_entry_loads_from_mock_data(dataset):
  entry = catalog.CATALOG[dataset]
  with tfds.testing.mock_data(num_examples=6):
    task = catalog.load_task(dataset, image_size=12)
  assert task.name == dataset and task.multi_label == entry.multi_label
  assert task.classes == tuple(range(entry.num_classes))
  for split in (task.train, task.test):
    assert split["image"].shape == (6, 12, 12, entry.channels)
    assert split["image"].dtype == np.uint8
    assert split["image"].std() > 0  # random pixels, not a blank fill
    labels = split["label"]
    assert labels.dtype == np.int32
    if entry.multi_label:
      assert labels.shape == (6, 20) and set(np.unique(labels)) <= {0, 1}
      assert labels.sum() > 0
    else:
      assert labels.shape == (6,)
      assert 0 <= labels.min() and labels.max() < entry.num_classes


def test_catalog_keys_match_the_tfds_features():
  for dataset, entry in catalog.CATALOG.items():
    features = tfds.builder(entry.tfds_name).info.features
    assert features[entry.image_key].shape[-1] == entry.channels, dataset
    label = features[entry.label_key]
    label = getattr(label, "feature", label)  # VOC: a sequence of labels
    assert label.num_classes == entry.num_classes, dataset


@pytest.mark.parametrize("batched", [True, False])
def test_classes_filter_and_map_labels_keeping_images_attached(batched):
  train_labels = [3, 7, 2, 7, 3, 2, 9, 7]
  test_labels = [2, 9, 7, 7]
  # Pixel value 10 * label (+ 1 in the test split); images of many sizes.
  sources = {
    "train": Source(
      [
        {"image": constant_image(10 * y, 20 + i, 9 + 3 * i), "label": np.int64(y)}
        for i, y in enumerate(train_labels)
      ],
      batched,
    ),
    "test": Source(
      [
        {"image": constant_image(10 * y + 1, 7, 31), "label": np.int64(y)}
        for y in test_labels
      ],
      batched,
    ),
  }
  with mock_sources(sources):
    task = catalog.load_task("cifar10", image_size=6, classes=(7, 2), name="two")
  assert task.name == "two" and task.classes == (7, 2)
  np.testing.assert_array_equal(task.train["label"], [0, 1, 0, 1, 0])
  np.testing.assert_array_equal(task.test["label"], [1, 0, 0])
  for split, offset in ((task.train, 0), (task.test, 1)):
    assert split["image"].shape[1:] == (6, 6, 3)
    original = np.array(task.classes)[split["label"]]
    expected = (10 * original + offset)[:, None, None, None]
    np.testing.assert_array_equal(
      split["image"], np.broadcast_to(expected, (len(original), 6, 6, 3))
    )


def test_max_train_per_class_keeps_the_first_and_stops_reading(monkeypatch):
  monkeypatch.setattr(catalog, "_CHUNK_SIZE", 2)
  train = [0, 1, 0, 0, 1, 2, 1, 2, 0, 1, 2, 0]
  sources = {
    "train": Source(
      [
        {"image": constant_image(i, 5, 5), "label": np.int64(y)}
        for i, y in enumerate(train)
      ]
    ),
    "test": Source([{"image": constant_image(0, 5, 5), "label": np.int64(1)}] * 3),
  }
  with mock_sources(sources):
    task = catalog.load_task(
      "cifar10", image_size=5, classes=(0, 1), max_train_per_class=2
    )
  # The first two 0s (positions 0, 2) and 1s (1, 4), in the data's order.
  np.testing.assert_array_equal(task.train["image"][:, 0, 0, 0], [0, 1, 2, 4])
  np.testing.assert_array_equal(task.train["label"], [0, 1, 0, 1])
  assert sources["train"].reads == 6  # quota full after the third chunk
  assert len(task.test["label"]) == 3  # the test split is untouched


def test_voc_multi_hot_labels_and_columns():
  train = [[3, 5], [5], [0, 3, 3], [19]]
  sources = {
    split: Source(
      [
        {"image": constant_image(i, 8, 4), "labels": np.array(y)}
        for i, y in enumerate(train)
      ]
    )
    for split in ("train", "validation")
  }
  with mock_sources(sources):
    full = catalog.load_task("voc", image_size=4)
    two = catalog.load_task("voc", image_size=4, classes=(5, 3), max_train_per_class=1)
  assert full.multi_label and full.train["label"].shape == (4, 20)
  expected = np.zeros((4, 20), np.int32)
  for i, present in enumerate(train):
    expected[i, present] = 1
  np.testing.assert_array_equal(full.train["label"], expected)
  np.testing.assert_array_equal(full.test["label"], expected)
  # Columns 5 and 3, every test image; training capped at 1 * 2 images.
  np.testing.assert_array_equal(two.train["label"], [[1, 1], [1, 0]])
  np.testing.assert_array_equal(two.test["label"], expected[:, [5, 3]])
  np.testing.assert_array_equal(two.train["image"][:, 0, 0, 0], [0, 1])


def test_grey_to_three_channels():
  with tfds.testing.mock_data(num_examples=3):
    grey = catalog.load_task("mnist", image_size=28)
    rgb = catalog.load_task("mnist", image_size=28, channels=3)
    with pytest.raises(ValueError, match="3 channels; converting them to 1"):
      catalog.load_task("cifar10", image_size=8, channels=1)
    with pytest.raises(ValueError, match="channels must be None, 1 or 3"):
      catalog.load_task("mnist", image_size=8, channels=2)
  assert grey.image_shape == (28, 28, 1) and rgb.image_shape == (28, 28, 3)
  for c in range(3):
    np.testing.assert_array_equal(
      rgb.train["image"][..., c], grey.train["image"][..., 0]
    )


def test_bad_arguments_raise_value_error():
  with pytest.raises(ValueError, match="valid data sets: imagenet, places365, cub"):
    catalog.load_task("imagenet21k", image_size=8)
  with pytest.raises(ValueError, match=r"classes \[10\] are outside its classes 0..9"):
    catalog.load_task("cifar10", image_size=8, classes=(1, 10))
  with pytest.raises(ValueError, match="image_size must be an integer >= 1"):
    catalog.load_task("cifar10", image_size=0)
  with pytest.raises(ValueError, match="max_train_per_class must be"):
    catalog.load_task("cifar10", image_size=8, max_train_per_class=-1)


def test_missing_files_say_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError) as raised:
    catalog.load_task("cub", image_size=8, data_dir=tmp_path)
  message = str(raised.value)
  assert "'cub'" in message and str(tmp_path) in message
  assert "tfds build caltech_birds2011 --file_format=array_record" in message
  with pytest.raises(FileNotFoundError, match="downloads/manual"):
    catalog.load_task("imagenet", image_size=8, data_dir=tmp_path)
  assert not any(tmp_path.iterdir())  # nothing downloaded or written


@pytest.mark.parametrize("data_dir", [None, ""])
def test_missing_files_in_the_default_data_dir_say_how_to_prepare(
  tmp_path, monkeypatch, data_dir
):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  monkeypatch.setenv("HOME", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="tfds build caltech_birds2011"):
    catalog.load_task("cub", image_size=8, data_dir=data_dir)


def test_datasets_load_task_dispatches_and_lists_all_names(tmp_path):
  assert datasets.names() == ("mnist5k", "uci_digits", *catalog.CATALOG, "mit_indoor67")
  with pytest.raises(
    ValueError, match=r"valid data sets: mnist5k, uci_digits, imagenet.*mit_indoor67"
  ):
    datasets.load_task("cifar10000")
  with pytest.raises(ValueError, match="image_size must be None"):
    datasets.load_task("mnist5k", image_size=32)
  with pytest.raises(ValueError, match="needs an image_size"):
    datasets.load_task("cub")
  with pytest.raises(ValueError, match="permutation_seed is only for the offline"):
    datasets.load_task("mnist", image_size=28, permutation_seed=1)
  with pytest.raises(ValueError, match="pass data_dir"):
    datasets.load_task("mit_indoor67", image_size=8)
  with tfds.testing.mock_data(num_examples=4):
    task = datasets.load_task("cifar100", image_size=8, max_train_per_class=1, name="c")
  assert task.name == "c" and task.image_shape == (8, 8, 3) and task.num_classes == 100


def make_folder(root):
  """Three classes of constant-colour PNGs of several sizes and modes, and lists.

  Image ``i`` of class ``k`` has every pixel ``40 * k + i``.
  """
  files = {"bedroom": 3, "kitchen": 2, "office": 3}  # sorted: labels 0, 1, 2
  for k, (class_name, count) in enumerate(files.items()):
    (root / "Images" / class_name).mkdir(parents=True)
    for i in range(count):
      size = (10 + 7 * i, 13 + 3 * k)
      mode = "L" if i == 1 else "RGB"  # a grey image among colour ones
      Image.new(mode, size, 40 * k + i if mode == "L" else (40 * k + i,) * 3).save(
        root / "Images" / class_name / f"{i}.png"
      )
  (root / "TrainImages.txt").write_text(
    "office/0.png\nbedroom/0.png\nbedroom/1.png\noffice/2.png\nkitchen/0.png\n"
    "bedroom/2.png\n\n"
  )
  (root / "TestImages.txt").write_text("kitchen/1.png\r\noffice/1.png\r\n")


def pixel(split):
  return split["image"][:, 0, 0, 0].tolist()


def test_image_folder_splits_labels_and_resizing(tmp_path):
  make_folder(tmp_path)
  task = catalog.load_image_folder(tmp_path, image_size=8)
  assert task.name == "mit_indoor67" and task.classes == (0, 1, 2)
  assert task.train["image"].shape == (6, 8, 8, 3)
  assert task.train["image"].dtype == np.uint8
  np.testing.assert_array_equal(task.train["label"], [2, 0, 0, 2, 1, 0])
  assert pixel(task.train) == [80, 0, 1, 82, 40, 2]
  np.testing.assert_array_equal(task.test["label"], [1, 2])
  assert pixel(task.test) == [41, 81]
  # Constant images stay constant: each resized image is one value everywhere.
  assert (task.train["image"] == task.train["image"][:, :1, :1, :1]).all()


def test_image_folder_classes_cap_and_grey(tmp_path):
  make_folder(tmp_path)
  task = catalog.load_image_folder(
    tmp_path, image_size=5, classes=(2, 0), max_train_per_class=1, channels=1, name="io"
  )
  assert task.name == "io" and task.image_shape == (5, 5, 1)
  np.testing.assert_array_equal(task.train["label"], [0, 1])  # office/0, bedroom/0
  assert pixel(task.train) == [80, 0]
  np.testing.assert_array_equal(task.test["label"], [0])  # office/1 only
  via_datasets = datasets.load_task("mit_indoor67", image_size=5, data_dir=tmp_path)
  assert via_datasets.train["image"].shape == (6, 5, 5, 3)


def test_image_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="Images/<class>/<file>"):
    catalog.load_image_folder(tmp_path, image_size=8)
  make_folder(tmp_path)
  (tmp_path / "TestImages.txt").write_text("garage/1.png\n")
  with pytest.raises(ValueError, match=r"line 1: 'garage/1\.png' is not in a class"):
    catalog.load_image_folder(tmp_path, image_size=8)
  (tmp_path / "TestImages.txt").write_text("office/9.png\n")
  with pytest.raises(FileNotFoundError, match=r"office/9\.png"):
    catalog.load_image_folder(tmp_path, image_size=8)


def test_resizing_is_bilinear_and_antialiased():
  checkerboard = (np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)
  record = {"image": np.repeat(checkerboard[..., None], 3, -1), "label": np.int64(1)}
  sources = {"train": Source([record] * 2), "test": Source([record])}
  with mock_sources(sources):
    task = catalog.load_task("cifar10", image_size=4)
  # Point sampling would give 0s and 255s; an antialiased filter averages them.
  assert 120 <= task.train["image"].min() <= task.train["image"].max() <= 135


def test_shards_hold_every_kept_example_once_and_read_only_their_own(monkeypatch):
  # Pixel value i in training record i; labels cycle over 0..4; classes (1, 3)
  # keep records 1, 3, 6, 8, 11, 13, ...; two shards alternate among those.
  train = Source(
    [{"image": constant_image(i, 5, 5), "label": np.int64(i % 5)} for i in range(20)]
  )
  test = Source(
    [
      {"image": constant_image(100 + i, 5, 5), "label": np.int64(i % 5)}
      for i in range(10)
    ]
  )
  resized = []
  original = catalog._resize
  monkeypatch.setattr(
    catalog, "_resize", lambda image, size: resized.append(1) or original(image, size)
  )
  whole, shards = None, []
  with mock_sources({"train": train, "test": test}):
    whole = catalog.load_task("cifar10", image_size=4, classes=(1, 3))
    resized.clear()
    for index in range(2):
      shards.append(
        catalog.load_task("cifar10", image_size=4, classes=(1, 3), shard=(index, 2))
      )
  assert pixel(whole.train) == [1, 3, 6, 8, 11, 13, 16, 18]
  assert pixel(shards[0].train) == [1, 6, 11, 16]
  assert pixel(shards[1].train) == [3, 8, 13, 18]
  assert pixel(shards[1].test) == [103, 108]
  assert len(resized) == 8 + 4  # only a shard's own images are decoded and resized
  for index, shard in enumerate(shards):
    expected = tasks.take_shard(whole, index, 2)
    np.testing.assert_array_equal(shard.train["label"], expected.train["label"])
    np.testing.assert_array_equal(shard.test["image"], expected.test["image"])


def test_image_folder_shard(tmp_path):
  make_folder(tmp_path)
  task = catalog.load_image_folder(tmp_path, image_size=8, shard=(1, 2))
  assert pixel(task.train) == [0, 82, 2]
  assert pixel(task.test) == [81]


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0), (0.0, 1), "01"])
def test_bad_shards_raise(shard):
  with pytest.raises(ValueError, match="a shard is"):
    catalog.load_task("cifar10", image_size=4, shard=shard)
