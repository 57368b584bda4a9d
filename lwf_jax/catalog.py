"""The paper's data sets as tasks: TFDS catalog entries and local image folders.

This module owns :data:`CATALOG` (which TFDS builder, splits and features each
named data set uses), the reading of TFDS data sources into uint8 NumPy splits,
and :func:`load_image_folder` for data sets TFDS has no builder for (MIT Indoor
67). Every loader gives a checked :class:`lwf_jax.tasks.Task` whose images are
``[n, image_size, image_size, channels]`` uint8: each image is resized whole,
bilinearly with antialiasing (PIL), as the paper's Caffe pipeline resizes to
256x256 before cropping; cropping and scaling happen elsewhere.

TFDS data are read with ``tfds.data_source``, which needs the data set prepared
as array_record files under ``data_dir`` but no TensorFlow, and never downloads:
``tfds.testing.mock_data`` serves the same code path in tests. Preparing the
files (on a machine with internet) is described in the README.
"""

import collections
import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
import tqdm

from lwf_jax import tasks

_CHUNK_SIZE = 256  # records read per data-source call


@dataclasses.dataclass(frozen=True)
class Entry:
  """How to read one TFDS data set.

  Attributes:
    tfds_name: the TFDS builder, with its config: ``'voc/2012'``.
    num_classes: the number of classes of the data set.
    note: one line on the data set and on preparing it.
    train_split: the TFDS split that trains.
    test_split: the TFDS split that tests (the validation split where the test
      split has no public labels).
    image_key: the feature holding the ``[h, w, c]`` uint8 image.
    label_key: the feature holding the label: a class index, or for a
      multi-label data set the sequence of class indices present.
    multi_label: labels are multi-hot ``[n, num_classes]``.
    channels: the images' channels in TFDS, 1 or 3.
    manual_download: TFDS cannot download the source files itself.
  """

  tfds_name: str
  num_classes: int
  note: str
  train_split: str = "train"
  test_split: str = "test"
  image_key: str = "image"
  label_key: str = "label"
  multi_label: bool = False
  channels: int = 3
  manual_download: bool = False


CATALOG: dict[str, Entry] = {
  "imagenet": Entry(
    "imagenet2012",
    1000,
    "ILSVRC 2012, 1.28M train / 50k validation images; manual download: put "
    "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from image-net.org) in "
    "<data_dir>/downloads/manual/ before building",
    test_split="validation",
    manual_download=True,
  ),
  "places365": Entry(
    "places365_small",
    365,
    "Places365-Standard at 256x256, 1.8M train / 36.5k validation images (its "
    "test split has no labels); the download is about 31 GB",
    test_split="validation",
  ),
  "cub": Entry(
    "caltech_birds2011",
    200,
    "CUB-200-2011 birds, 5,994 train / 5,794 test images; building it needs "
    "opencv-python",
  ),
  "voc": Entry(
    "voc/2012",
    20,
    "PASCAL VOC 2012 classification, 5,717 train / 5,823 validation images; "
    "multi-label: the classes of the objects present, difficult ones included",
    test_split="validation",
    label_key="labels",
    multi_label=True,
  ),
  "mnist": Entry(
    "mnist", 10, "MNIST digits, 60k train / 10k test 28x28 grey images", channels=1
  ),
  "cifar10": Entry("cifar10", 10, "CIFAR-10, 50k train / 10k test 32x32 images"),
  "cifar100": Entry(
    "cifar100", 100, "CIFAR-100, fine labels, 50k train / 10k test 32x32 images"
  ),
}

# Local image folders (no TFDS builder): name -> note. Loaded by load_image_folder.
IMAGE_FOLDERS: dict[str, str] = {
  "mit_indoor67": (
    "MIT Indoor 67 scenes, 5,360 train / 1,340 test images; data_dir holds "
    "Images/<class>/<file>, TrainImages.txt and TestImages.txt"
  ),
}


def names() -> tuple[str, ...]:
  """Every data set this module loads: the catalog's, then the image folders'."""
  return (*CATALOG, *IMAGE_FOLDERS)


def load_task(
  dataset: str,
  *,
  image_size: int,
  name: str | None = None,
  classes: Sequence[int] | None = None,
  max_train_per_class: int = 0,
  channels: int | None = None,
  data_dir: str | pathlib.Path | None = None,
  shard: tuple[int, int] = (0, 1),
) -> tasks.Task:
  """Loads a catalog data set (or a registered image folder) as a task.

  Args:
    dataset: a key of :data:`CATALOG` or :data:`IMAGE_FOLDERS`.
    image_size: every image is resized to ``image_size x image_size``.
    name: the task's name; defaults to ``dataset``.
    classes: the original labels to keep, in head order; defaults to all.
      Single-label: only examples of these classes are kept. Multi-label: every
      example is kept, with the multi-hot columns of these classes.
    max_train_per_class: if positive, keep only the first that many training
      examples of each class (multi-label: the first ``max_train_per_class *
      len(classes)`` training examples); the test split is untouched.
    channels: 3 repeats grey images to three channels, 1 keeps grey images
      (colour images are an error); ``None`` keeps the data set's own (3 for
      an image folder).
    data_dir: the TFDS data directory (default: ``TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``); for an image folder, its root (required).
    shard: ``(index, count)``: keep (and resize, and hold in memory) only every
      ``count``-th of the examples the other arguments keep, from the
      ``index``-th on, in both splits: one process's shard of a multi-process
      run (:func:`lwf_jax.tasks.take_shard` on the whole task gives the same).

  Returns:
    The checked task: ``image`` ``[n, image_size, image_size, c]`` uint8;
    ``label`` ``[n]`` int32, or ``[n, len(classes)]`` int32 of 0 and 1 for a
    multi-label data set (``task.multi_label``).

  Raises:
    ValueError: an unknown data set or a bad argument.
    FileNotFoundError: the data set is not prepared under ``data_dir``.
  """
  if dataset in IMAGE_FOLDERS:
    if data_dir is None:
      raise ValueError(
        f"data set {dataset!r} has no TFDS builder: pass data_dir, the folder "
        f"that holds it ({IMAGE_FOLDERS[dataset]})"
      )
    return load_image_folder(
      data_dir,
      image_size=image_size,
      name=name or dataset,
      classes=classes,
      max_train_per_class=max_train_per_class,
      channels=3 if channels is None else channels,
      shard=shard,
    )
  if dataset not in CATALOG:
    raise ValueError(
      f"unknown data set {dataset!r}; valid data sets: {', '.join(names())}"
    )
  entry = CATALOG[dataset]
  where = f"data set {dataset!r}"
  tasks.check_name(name or dataset)  # before minutes of reading, not after
  _check_options(image_size, max_train_per_class, channels, where=where)
  channels = entry.channels if channels is None else channels
  if channels < entry.channels:
    raise ValueError(
      f"{where}: its images have {entry.channels} channels; converting them to "
      f"{channels} is not supported"
    )
  classes = _check_classes(classes, entry.num_classes, where=where)
  tasks.check_shard(shard)
  cap = max_train_per_class * (len(classes) if entry.multi_label else 1)
  splits = []
  for split, quota in (
    (entry.train_split, _Quota(classes, cap, per_class=not entry.multi_label)),
    (entry.test_split, _Quota(classes, 0, per_class=not entry.multi_label)),
  ):
    source = _open(dataset, entry, split, data_dir)
    splits.append(
      _read_source(
        source,
        entry,
        quota,
        image_size=image_size,
        channels=channels,
        shard=shard,
        where=f"{where}, {split} split",
      )
    )
  return tasks.make_task(
    name or dataset, classes, *splits, multi_label=entry.multi_label
  )


def load_image_folder(
  root: str | pathlib.Path,
  *,
  image_size: int,
  name: str = "mit_indoor67",
  train_list: str = "TrainImages.txt",
  test_list: str = "TestImages.txt",
  classes: Sequence[int] | None = None,
  max_train_per_class: int = 0,
  channels: int = 3,
  shard: tuple[int, int] = (0, 1),
) -> tasks.Task:
  """Loads images in ``root/Images/<class>/<file>`` as a single-label task.

  The list files (paths relative to ``root``, or absolute) hold one image path
  ``<class>/<file>``, relative to ``root/Images``, per line: MIT Indoor 67's
  official ``TrainImages.txt`` and ``TestImages.txt``. Class ``k`` is the
  ``k``-th of the sorted folder names in ``root/Images``.

  Args:
    root: the data set's folder.
    image_size: every image is resized to ``image_size x image_size``.
    name: the task's name.
    train_list: the training images' list file.
    test_list: the test images' list file.
    classes: the class indices to keep, in head order; defaults to all.
    max_train_per_class: if positive, keep only the first that many training
      images of each class, in list order; the test split is untouched.
    channels: 3 (RGB) or 1 (grey); every image is converted to it.
    shard: ``(index, count)``: read only that shard of the listed images (see
      :func:`load_task`).

  Returns:
    The checked task: ``image`` ``[n, image_size, image_size, channels]`` uint8,
    ``label`` ``[n]`` int32, in list order.
  """
  from PIL import Image

  root = pathlib.Path(root)
  where = f"image folder {str(root)!r}"
  tasks.check_name(name)
  _check_options(image_size, max_train_per_class, channels, where=where)
  folder = root / "Images"
  if not folder.is_dir():
    raise FileNotFoundError(
      f"{where}: {folder} is not a folder; expected root/Images/<class>/<file> "
      f"with list files {train_list} and {test_list} in root"
    )
  class_names = sorted(path.name for path in folder.iterdir() if path.is_dir())
  index = {class_name: k for k, class_name in enumerate(class_names)}
  classes = _check_classes(classes, len(class_names), where=where)
  tasks.check_shard(shard)
  mode = "RGB" if channels == 3 else "L"
  splits = []
  for list_name, cap in ((train_list, max_train_per_class), (test_list, 0)):
    list_path = root / list_name
    if not list_path.is_file():
      raise FileNotFoundError(f"{where}: the list file {list_path} is missing")
    quota = _Quota(classes, cap, per_class=True)
    paths, labels = [], []
    for line_number, line in enumerate(list_path.read_text().splitlines(), 1):
      relative = line.strip()
      if not relative:
        continue
      class_name = pathlib.PurePosixPath(relative).parts[0]
      if class_name not in index:
        raise ValueError(
          f"{list_path}, line {line_number}: {relative!r} is not in a class folder "
          f"of {folder}"
        )
      if quota.take(index[class_name]):
        paths.append(folder / relative)
        labels.append(index[class_name])
    paths, labels = paths[shard[0] :: shard[1]], labels[shard[0] :: shard[1]]
    images = []
    for path in tqdm.tqdm(paths, desc=f"{name} {list_name}", unit="image"):
      if not path.is_file():
        raise FileNotFoundError(f"{where}: {path}, listed in {list_path}, is missing")
      with Image.open(path) as image:
        images.append(_resize(np.asarray(image.convert(mode)), image_size))
    if not images:
      raise ValueError(f"{where}: {list_path} lists no images of classes {classes}")
    splits.append({"image": np.stack(images), "label": np.array(labels, np.int32)})
  return tasks.make_task(name, classes, *splits)


@dataclasses.dataclass
class _Quota:
  """Which examples to keep, decided one example at a time, in order.

  Single-label (``per_class``): examples of ``classes``, at most ``cap`` of
  each. Multi-label: every example, at most ``cap`` in total. ``cap`` 0: no cap.
  """

  classes: tuple[int, ...]
  cap: int
  per_class: bool
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def take(self, label: int | None) -> bool:
    key = label if self.per_class else None
    if self.per_class and label not in self.classes:
      return False
    if self.cap and self.counts[key] >= self.cap:
      return False
    self.counts[key] += 1
    return True

  @property
  def full(self) -> bool:
    if not self.cap:
      return False
    keys = self.classes if self.per_class else (None,)
    return all(self.counts[key] >= self.cap for key in keys)


def _check_options(
  image_size: int, max_train_per_class: int, channels: int | None, *, where: str
) -> None:
  for value, what, low in (
    (image_size, "image_size", 1),
    (max_train_per_class, "max_train_per_class", 0),
  ):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"{where}: {what} must be an integer >= {low}, got {value!r}")
  if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
    raise ValueError(f"{where}: channels must be None, 1 or 3, got {channels!r}")


def _check_classes(
  classes: Sequence[int] | None, num_classes: int, *, where: str
) -> tuple[int, ...]:
  if classes is None:
    classes = range(num_classes)
  classes = tasks.check_classes(classes, where=where)
  outside = [c for c in classes if not 0 <= c < num_classes]
  if outside:
    raise ValueError(
      f"{where}: classes {outside} are outside its classes 0..{num_classes - 1}"
    )
  return classes


def _import_tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as error:
    raise ImportError(
      "the TFDS catalog needs tensorflow-datasets, array_record and pillow: "
      "pip install tensorflow-datasets array_record pillow"
    ) from error
  return tfds


def _open(dataset: str, entry: Entry, split: str, data_dir):
  """The split's TFDS data source; ``FileNotFoundError`` if it is not prepared."""
  tfds = _import_tfds()
  try:
    return tfds.data_source(
      entry.tfds_name, split=split, data_dir=data_dir, download=False
    )
  except (NotImplementedError, FileNotFoundError, AssertionError, KeyError) as error:
    # Without prepared files TFDS falls back to the builder's defaults and
    # complains about the file format (NotImplementedError) or finds no splits
    # (KeyError, in the default data_dir); say what to do.
    root = str(data_dir or tfds.core.constants.get_default_data_dir())
    raise FileNotFoundError(
      f"data set {dataset!r} (TFDS {entry.tfds_name!r}, split {split!r}) is not "
      f"prepared as array_record files in data_dir {root!r}. "
      "On a machine with internet, run `pip install tensorflow tensorflow-datasets` "
      f"and `tfds build {entry.tfds_name} --file_format=array_record "
      f"--data_dir={root}`, then copy {root}/{entry.tfds_name}/ to this machine's "
      f"data_dir. Note: {entry.note}."
    ) from error


def _chunks(source, size: int):
  """Yields the source's records in order, as lists of at most ``size``."""
  batched = hasattr(source, "__getitems__")
  for start in range(0, len(source), size):
    keys = list(range(start, min(start + size, len(source))))
    records = None
    if batched:
      try:
        records = source.__getitems__(keys)
      except TypeError:
        # tfds.testing.mock_data (4.9.10) installs a __getitems__ that cannot
        # be called; a source whose first batch fails is read record by record.
        if start:
          raise
        batched = False
    if records is None:
      records = [source[key] for key in keys]
    yield records


def _read_source(
  source,
  entry: Entry,
  quota: _Quota,
  *,
  image_size: int,
  channels: int,
  where: str,
  shard: tuple[int, int] = (0, 1),
) -> tasks.Split:
  """Reads the kept records: ``{'image': [n, s, s, c] uint8, 'label'}``.

  ``label`` holds the data set's own labels: ``[n]`` int64, or ``[n, K]`` int32
  multi-hot for a multi-label entry. Reading stops once ``quota`` is full. Of the
  kept records, only ``shard``'s are decoded further and held.
  """
  images, labels = [], []
  kept = 0
  with tqdm.tqdm(total=len(source), desc=where, unit="image") as bar:
    for records in _chunks(source, _CHUNK_SIZE):
      for record in records:
        label = _label(record[entry.label_key], entry, where=where)
        if quota.take(None if entry.multi_label else int(label)):
          kept += 1
          if (kept - 1) % shard[1] != shard[0]:
            continue
          image = _resize(np.asarray(record[entry.image_key]), image_size)
          if image.shape[-1] == 1 and channels == 3:
            image = np.repeat(image, 3, axis=-1)
          elif image.shape[-1] != channels:
            raise ValueError(
              f"{where}: an image has {image.shape[-1]} channels, not {channels}"
            )
          images.append(image)
          labels.append(label)
      bar.update(len(records))
      if quota.full:
        break
  if not images:
    raise ValueError(f"{where}: no examples of classes {list(quota.classes)}")
  return {"image": np.stack(images), "label": np.stack(labels)}


def _label(value, entry: Entry, *, where: str) -> np.ndarray:
  """A record's label: an int64 class index, or ``[K]`` int32 multi-hot."""
  value = np.asarray(value, np.int64)
  expected_ndim = 1 if entry.multi_label else 0
  if value.ndim != expected_ndim or (
    value.size and not (0 <= value.min() and value.max() < entry.num_classes)
  ):
    raise ValueError(
      f"{where}: a label {value.tolist()} is not "
      f"{'a list of classes' if entry.multi_label else 'a class'} in "
      f"[0, {entry.num_classes})"
    )
  if not entry.multi_label:
    return value
  hot = np.zeros(entry.num_classes, np.int32)
  hot[value] = 1
  return hot


def _resize(image: np.ndarray, image_size: int) -> np.ndarray:
  """``[h, w]`` or ``[h, w, c]`` uint8 -> ``[s, s, c]`` uint8 (c 1 or 3).

  Bilinear with antialiasing: PIL widens its filter when it shrinks an image.
  """
  from PIL import Image

  if image.ndim == 2:
    image = image[..., None]
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(
      f"images must be [h, w, 1 or 3] uint8, got {image.dtype} of shape {image.shape}"
    )
  if image.shape[:2] == (image_size, image_size):
    return image
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  resized = pil.resize((image_size, image_size), Image.Resampling.BILINEAR)
  return np.asarray(resized).reshape(image_size, image_size, channels)
