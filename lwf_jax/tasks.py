"""Tasks: a named classification problem with its own head, train and test splits.

A split is a dict of NumPy arrays with a leading example axis,
``{'image': [n, height, width, channels] float32 or uint8, 'label': [n] int32}``
(a multi-label task's labels are multi-hot, ``[n, classes]`` int32 of 0 and 1;
uint8 images keep large data sets four times smaller and are cast on the
device); LwF adds
``'recorded': {head: [n, classes]}`` to the training split, so that every
per-example array travels through shuffling and batching together.

Everything a training run reads is checked here, on the host, before anything is
compiled: XLA cannot raise, and an out-of-range label would silently be clamped.
"""

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

Split = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Task:
  """A classification task.

  Attributes:
    name: the task's name, also the name of its head in the network.
    classes: the data set's original labels that the task uses, in head order:
      head output ``k`` is class ``classes[k]``.
    train: the training split, labels already in ``[0, len(classes))``.
    test: the test split, likewise.
    multi_label: each image may have several of the classes (labels multi-hot,
      one sigmoid per class, scored by mean average precision), as PASCAL VOC.
  """

  name: str
  classes: tuple[int, ...]
  train: Split
  test: Split
  multi_label: bool = False

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.train["image"].shape[1:])


def map_labels(labels: np.ndarray, classes: Sequence[int], *, where: str) -> np.ndarray:
  """Maps original labels to head indices: ``classes[k] -> k``.

  Args:
    labels: ``[n]`` integer labels of the data set.
    classes: the task's classes in head order, distinct.
    where: what the labels belong to, for the error message.

  Returns:
    ``[n]`` int32 head indices.

  Raises:
    ValueError: a label is not one of ``classes``.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
      f"{where}: labels must be a 1-D integer array, got "
      f"{labels.dtype} of shape {labels.shape}"
    )
  lookup = {int(c): k for k, c in enumerate(classes)}
  unknown = sorted(set(np.unique(labels).tolist()) - set(lookup))
  if unknown:
    raise ValueError(
      f"{where}: labels {unknown[:10]} are outside the head's classes {list(classes)}"
    )
  return np.array([lookup[int(y)] for y in labels], dtype=np.int32)


def check_name(name: str) -> None:
  """Raises ``ValueError`` unless ``name`` can name a task and its head.

  A name is one parameter-path segment (``heads/<name>/...``): it must be a
  non-empty string without ``/``, or one head's freeze pattern could match another
  head's parameters.
  """
  if not isinstance(name, str) or not name or "/" in name:
    raise ValueError(
      f"a task name must be a non-empty string without '/', got {name!r}"
    )


def check_classes(classes: Sequence[int], *, where: str) -> tuple[int, ...]:
  """The classes as distinct Python ints, at least two; else ``ValueError``."""
  if isinstance(classes, str | bytes) or not hasattr(classes, "__iter__"):
    raise ValueError(
      f"{where}: classes must be a sequence of integers, got {classes!r}"
    )
  classes = tuple(classes)
  if not all(
    isinstance(c, int | np.integer) and not isinstance(c, bool) for c in classes
  ):
    raise ValueError(f"{where}: classes must be integers, got {list(classes)}")
  classes = tuple(int(c) for c in classes)
  if len(set(classes)) != len(classes):
    raise ValueError(f"{where}: classes {list(classes)} repeat a class")
  if len(classes) < 2:
    raise ValueError(f"{where}: a head needs at least 2 classes, got {list(classes)}")
  return classes


def check_split(
  split: Split, num_classes: int, *, where: str, multi_label: bool = False
) -> None:
  """Raises ``ValueError`` unless ``split`` is usable for a head of ``num_classes``.

  Every array in the split, recordings included, must have one row per example.
  """
  if not isinstance(split.get("image"), np.ndarray) or not isinstance(
    split.get("label"), np.ndarray
  ):
    raise ValueError(f"{where}: a split needs 'image' and 'label' NumPy arrays")
  images, labels = split["image"], split["label"]
  lengths = {
    "/".join(str(getattr(k, "key", k)) for k in path): np.shape(leaf)[:1]
    for path, leaf in jax.tree_util.tree_leaves_with_path(split)
  }
  if len(set(lengths.values())) > 1:
    raise ValueError(f"{where}: arrays differ in length: {lengths}")
  if images.ndim != 4 or 0 in images.shape[1:]:
    raise ValueError(
      f"{where}: images must be [n, height, width, channels], got shape {images.shape}"
    )
  if images.dtype not in (np.float32, np.uint8):
    raise ValueError(f"{where}: images must be float32 or uint8, got {images.dtype}")
  if len(images) == 0:
    raise ValueError(f"{where}: the split is empty")
  if images.dtype == np.float32 and not np.isfinite(images).all():
    raise ValueError(f"{where}: images contain NaN or Inf")
  if multi_label:
    if (
      labels.dtype != np.int32
      or labels.shape[1:] != (num_classes,)
      or not np.isin(labels, (0, 1)).all()
    ):
      raise ValueError(
        f"{where}: multi-label labels must be [n, {num_classes}] int32 of 0 and 1, "
        f"got {labels.dtype} of shape {labels.shape}"
      )
    return
  if (
    labels.dtype != np.int32
    or labels.ndim != 1
    or labels.min() < 0
    or labels.max() >= num_classes
  ):
    raise ValueError(
      f"{where}: labels must be [n] int32 in [0, {num_classes}), got "
      f"{labels.dtype} of shape {labels.shape} in [{labels.min()}, {labels.max()}]"
    )


def make_task(
  name: str,
  classes: Sequence[int],
  train: Split,
  test: Split,
  *,
  multi_label: bool = False,
) -> Task:
  """Builds a checked :class:`Task` from splits with the data set's own labels.

  Args:
    name: the task's (and head's) name.
    classes: the original labels the task keeps, in head order; at least two.
    train: ``{'image', 'label'}`` with original labels, only those in ``classes``;
      for a multi-label task, ``label`` is ``[n, K]`` multi-hot over the data
      set's ``K`` classes, and the task keeps the columns ``classes``.
    test: likewise.
    multi_label: see :class:`Task`.

  Returns:
    The task, with labels mapped into ``[0, len(classes))`` (multi-label: the
    multi-hot columns of ``classes``, in that order).
  """
  check_name(name)
  classes = check_classes(classes, where=f"task {name!r}")
  mapped = {}
  for split_name, original in (("train", train), ("test", test)):
    where = f"task {name!r}, {split_name} split"
    if "label" not in original or "image" not in original:
      raise ValueError(f"{where}: a split needs 'image' and 'label' arrays")
    if multi_label:
      labels = select_columns(original["label"], classes, where=where)
    else:
      labels = map_labels(original["label"], classes, where=where)
    split = dict(original, label=labels)
    check_split(split, len(classes), where=where, multi_label=multi_label)
    mapped[split_name] = split
  if mapped["train"]["image"].shape[1:] != mapped["test"]["image"].shape[1:]:
    raise ValueError(f"task {name!r}: train and test images differ in shape")
  if mapped["train"]["image"].dtype != mapped["test"]["image"].dtype:
    raise ValueError(f"task {name!r}: train and test images differ in dtype {SCALES}")
  if multi_label and not mapped["test"]["label"].any():
    raise ValueError(
      f"task {name!r}: the test split has no positive label, so no class can be "
      "scored by average precision"
    )
  return Task(name, classes, mapped["train"], mapped["test"], multi_label)


def select_columns(
  labels: np.ndarray, classes: Sequence[int], *, where: str
) -> np.ndarray:
  """Multi-hot ``[n, K]`` labels to the task's ``[n, len(classes)]`` int32 columns."""
  labels = np.asarray(labels)
  if labels.ndim != 2 or not np.isin(labels, (0, 1)).all():
    raise ValueError(
      f"{where}: multi-label labels must be [n, classes] of 0 and 1, got "
      f"{labels.dtype} of shape {labels.shape}"
    )
  if max(classes) >= labels.shape[1] or min(classes) < 0:
    raise ValueError(
      f"{where}: classes {list(classes)} are outside the {labels.shape[1]} label "
      "columns"
    )
  return labels[:, list(classes)].astype(np.int32)


def filter_classes(split: Split, classes: Sequence[int]) -> Split:
  """Keeps the examples whose original label is one of ``classes``."""
  keep = np.isin(split["label"], classes)
  return {key: value[keep] for key, value in split.items()}


def check_task_sequence(tasks: Sequence[Task]) -> None:
  """Raises ``ValueError`` unless the tasks can share one network."""
  names = [task.name for task in tasks]
  if len(set(names)) != len(names):
    raise ValueError(f"task names must be distinct, got {names}")
  shapes = {task.image_shape for task in tasks}
  if len(shapes) > 1:
    raise ValueError(f"tasks must share one image shape, got {sorted(shapes)}")
  dtypes = {task.name: str(task.train["image"].dtype) for task in tasks}
  if len(set(dtypes.values())) > 1:
    raise ValueError(f"tasks must share one image dtype {SCALES}, got {dtypes}")


SCALES = "(float32 images are in [0, 1], uint8 ones in [0, 255])"


def check_shard(shard: tuple[int, int]) -> None:
  """Raises unless ``shard`` is ``(index, count)`` with ``0 <= index < count``."""
  ok = (
    isinstance(shard, tuple | list)
    and len(shard) == 2
    and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
    and 0 <= shard[0] < shard[1]
  )
  if not ok:
    raise ValueError(
      f"a shard is (index, count) with 0 <= index < count, got {shard!r}"
    )


def take_shard(task: Task, index: int, count: int) -> Task:
  """Every ``count``-th example of both splits, from example ``index`` on.

  Shards differ in size by at most one example; ``count`` 1 returns ``task``.
  """
  check_shard((index, count))
  if count == 1:
    return task
  rows = lambda split: jax.tree.map(lambda a: a[index::count], split)
  shard = dataclasses.replace(task, train=rows(task.train), test=rows(task.test))
  if min(len(shard.train["label"]), len(shard.test["label"])) == 0:
    raise ValueError(f"task {task.name!r} has too few examples for {count} shards")
  return shard
