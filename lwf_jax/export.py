"""Trained networks for inference: export to a directory, load, predict classes.

An export is a checkpoint (:mod:`lwf_jax.checkpoints`: orbax arrays and JSON
metadata, so loading never executes code) of one network's variables together
with what rebuilds and reads it::

    {'format': 'lwf_jax.export', 'version': 1,
     'trunk': 'mlp_tiny', 'compute_dtype': 'float32',   # trunks.make_trunk
     'heads': [{'name', 'num_classes', 'hidden_sizes', 'multi_label',
                'classes'}, ...],                       # in the network's order
     'image_shape': [h, w, c], 'pixel_mean': [...], 'image_dtype': 'float32'}

``classes`` are the data set's original labels in head order (head output ``k``
is class ``classes[k]``, as :class:`lwf_jax.tasks.Task`). The network reads its
images at the scale it was trained on, which the image dtype says
(:data:`lwf_jax.tasks.SCALES`), so predictions check the dtype.
"""

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lwf_jax import checkpoints, inference, models, tasks, trunks

FORMAT = "lwf_jax.export"
VERSION = 1
IMAGE_DTYPES = ("float32", "uint8")


def _variables(variables: models.Variables) -> models.Variables:
  """The collections inference reads, ``batch_stats`` present even when empty."""
  return {
    "params": variables["params"],
    "batch_stats": variables.get("batch_stats", {}),
  }


def check_variables(model: models.MultiHeadNet, variables: models.Variables) -> None:
  """Raises ``ValueError`` unless ``variables`` are one network's of ``model``.

  Compares every leaf's shape and dtype with ``model.init``'s (traced by
  ``jax.eval_shape``, nothing computed); variables stacked on a leading seed
  axis (:mod:`lwf_jax.seeds`) get their own message.
  """
  init = functools.partial(model.init, train=False)
  image = jax.ShapeDtypeStruct((1, *model.image_shape), jnp.float32)
  want = _variables(jax.eval_shape(init, jax.random.key(0), image))
  got = _variables(variables)
  want_leaves, want_tree = jax.tree_util.tree_flatten_with_path(want)
  got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(got)
  if want_tree != got_tree:
    raise ValueError(
      f"the variables do not match the network: they hold "
      f"{[jax.tree_util.keystr(p) for p, _ in got_leaves]}, the network "
      f"{[jax.tree_util.keystr(p) for p, _ in want_leaves]}"
    )
  pairs = [
    (jax.tree_util.keystr(path), np.shape(g), w.shape, np.dtype(g.dtype), w.dtype)
    for (path, w), (_, g) in zip(want_leaves, got_leaves, strict=True)
  ]
  if pairs and all(len(g) == len(w) + 1 and g[1:] == w for _, g, w, *_ in pairs):
    raise ValueError(
      f"the variables carry a leading seed axis of {pairs[0][1][0]} seeds; export "
      "one seed's network, lwf_jax.seeds.take(variables, seed)"
    )
  for path, got_shape, want_shape, got_dtype, want_dtype in pairs:
    if (got_shape, got_dtype) != (want_shape, want_dtype):
      raise ValueError(
        f"variable {path} is {got_dtype}{list(got_shape)}, the network needs "
        f"{want_dtype}{list(want_shape)}"
      )


def _compute_dtype(trunk: Any) -> str:
  names = {np.dtype(d): n for n, d in trunks.DTYPES.items()}
  return names.get(np.dtype(getattr(trunk, "dtype", jnp.float32)), "float32")


def _head_classes(
  model: models.MultiHeadNet, classes: Mapping[str, Sequence[int]] | None
) -> dict[str, tuple[int, ...]]:
  """Each head's original labels, checked; ``range(num_classes)`` if not given."""
  classes = dict(classes or {})
  unknown = sorted(set(classes) - set(model.head_names))
  if unknown:
    raise ValueError(f"classes for {unknown}: the network has {model.head_names}")
  checked = {}
  for spec in model.head_specs:
    labels = tasks.check_classes(
      classes.get(spec.name, range(spec.num_classes)), where=f"head {spec.name!r}"
    )
    if len(labels) != spec.num_classes:
      raise ValueError(
        f"head {spec.name!r} has {spec.num_classes} classes, got "
        f"{len(labels)} labels {list(labels)}"
      )
    checked[spec.name] = labels
  return checked


def save(
  directory: str,
  model: models.MultiHeadNet,
  variables: models.Variables,
  *,
  trunk: str,
  compute_dtype: str | None = None,
  classes: Mapping[str, Sequence[int]] | None = None,
  image_dtype: str = "float32",
) -> None:
  """Exports one trained network to a new ``directory``.

  Args:
    directory: where to write; must not exist (``FileExistsError``).
    model: the network.
    variables: its variables, one seed's (no leading seed axis).
    trunk: the trunk's name, a key of :data:`lwf_jax.trunks.TRUNKS`, that with
      ``compute_dtype`` rebuilds ``model.trunk``.
    compute_dtype: ``'float32'`` or ``'bfloat16'``; default the trunk's own.
    classes: ``{head: original labels in head order}``; a head left out gets
      ``range(num_classes)``.
    image_dtype: the dtype of the images the network was trained on,
      ``'float32'`` or ``'uint8'`` (each has its scale, :data:`tasks.SCALES`).

  Raises:
    ValueError: ``trunk`` does not rebuild the model's trunk, classes do not fit
      their heads, the variables do not fit the model (or are stacked seeds).
  """
  compute_dtype = compute_dtype or _compute_dtype(model.trunk)
  if trunks.make_trunk(trunk, compute_dtype) != model.trunk:
    raise ValueError(
      f"trunk {trunk!r} computing in {compute_dtype} does not rebuild the "
      f"network's trunk {model.trunk}"
    )
  if image_dtype not in IMAGE_DTYPES:
    raise ValueError(
      f"image_dtype must be one of {IMAGE_DTYPES} {tasks.SCALES}, got {image_dtype!r}"
    )
  if not model.head_specs or len(model.image_shape) != 3:
    raise ValueError(
      f"only a network with heads and an input shape can be exported, got heads "
      f"{model.head_names} and image shape {model.image_shape}"
    )
  head_classes = _head_classes(model, classes)
  check_variables(model, variables)
  metadata = {
    "format": FORMAT,
    "version": VERSION,
    "trunk": trunk,
    "compute_dtype": compute_dtype,
    "heads": [
      {
        "name": spec.name,
        "num_classes": int(spec.num_classes),
        "hidden_sizes": [int(s) for s in spec.hidden_sizes],
        "multi_label": bool(spec.multi_label),
        "classes": list(head_classes[spec.name]),
      }
      for spec in model.head_specs
    ],
    "image_shape": [int(s) for s in model.image_shape],
    "pixel_mean": [float(m) for m in model.pixel_mean],
    "image_dtype": image_dtype,
  }
  checkpoints.save(directory, _variables(variables), metadata)


@dataclasses.dataclass(frozen=True)
class Predictor:
  """A loaded network that predicts each task's original class labels.

  Attributes:
    model: the rebuilt network.
    variables: its variables.
    classes: ``{head: original labels in head order}``.
    image_dtype: the dtype of the images it reads (``'float32'``: any float
      dtype is accepted and cast; ``'uint8'``: uint8 only).
  """

  model: models.MultiHeadNet
  variables: models.Variables
  classes: dict[str, tuple[int, ...]]
  image_dtype: str = "float32"

  @property
  def heads(self) -> list[str]:
    return self.model.head_names

  def _check(self, images: Any, task: str) -> np.ndarray:
    """``images`` as the network reads them; ``ValueError`` before any compute."""
    if task not in self.classes:
      raise ValueError(f"no head for task {task!r}; the network has {self.heads}")
    images = np.asarray(images)
    inference.check_images(self.model, images)
    if self.image_dtype == "uint8":
      if images.dtype != np.uint8:
        raise ValueError(
          f"the network reads uint8 images, got {images.dtype} {tasks.SCALES}"
        )
      return images
    if not np.issubdtype(images.dtype, np.floating):
      raise ValueError(
        f"the network reads float images, got {images.dtype} {tasks.SCALES}"
      )
    images = images.astype(np.float32, copy=False)
    if not np.isfinite(images).all():
      raise ValueError("the images contain NaN or Inf")
    return images

  def logits(
    self, images: Any, task: str, *, batch_size: int = 500, num_devices: int = 1
  ) -> np.ndarray:
    """``task``'s head's logits, ``[n, num_classes]`` float32, row ``i`` for
    ``images[i]`` (``[n, height, width, channels]``)."""
    images = self._check(images, task)
    prediction = inference.predict(
      self.model,
      self.variables,
      images,
      batch_size=batch_size,
      num_devices=num_devices,
    )
    return prediction.logits[task]

  def predict(
    self, images: Any, task: str, *, batch_size: int = 500, num_devices: int = 1
  ) -> np.ndarray:
    """``task``'s predicted original labels for ``[n, height, width, channels]``
    images: ``[n]`` int64 (``classes[argmax]``), or for a multi-label task
    ``[n, num_classes]`` int32 multi-hot (logit > 0), columns in head order."""
    logits = self.logits(images, task, batch_size=batch_size, num_devices=num_devices)
    if self.model.head_specs[self.heads.index(task)].multi_label:
      return (logits > 0).astype(np.int32)
    return np.asarray(self.classes[task], np.int64)[np.argmax(logits, axis=-1)]


def _rebuild(metadata: dict[str, Any]) -> tuple[models.MultiHeadNet, dict, str]:
  """``(model, classes, image_dtype)`` from an export's metadata."""
  if (metadata.get("format"), metadata.get("version")) != (FORMAT, VERSION):
    raise ValueError(
      f"not an export of format {FORMAT!r} version {VERSION}: format "
      f"{metadata.get('format')!r} version {metadata.get('version')!r}"
    )
  specs = tuple(
    models.HeadSpec(
      head["name"],
      int(head["num_classes"]),
      tuple(int(s) for s in head["hidden_sizes"]),
      bool(head["multi_label"]),
    )
    for head in metadata["heads"]
  )
  model = models.MultiHeadNet(
    trunk=trunks.make_trunk(metadata["trunk"], metadata["compute_dtype"]),
    head_specs=specs,
    image_shape=tuple(int(s) for s in metadata["image_shape"]),
    pixel_mean=tuple(float(m) for m in metadata["pixel_mean"]),
  )
  classes = {head["name"]: head["classes"] for head in metadata["heads"]}
  if metadata["image_dtype"] not in IMAGE_DTYPES or len(model.image_shape) != 3:
    raise ValueError(
      f"image dtype {metadata['image_dtype']!r} and shape {model.image_shape}"
    )
  return model, _head_classes(model, classes), metadata["image_dtype"]


def load(directory: str) -> Predictor:
  """Loads a network exported by :func:`save`.

  Raises:
    ValueError: naming ``directory``, when it holds no readable export of this
      format (missing, damaged, another format or version).
  """
  variables, metadata = checkpoints.load(directory)
  try:
    model, classes, image_dtype = _rebuild(metadata)
    variables = _variables(variables)
    check_variables(model, variables)
  except (KeyError, TypeError, ValueError, AttributeError) as error:
    raise ValueError(f"cannot load the export at {directory}: {error!r}") from error
  return Predictor(model, variables, classes, image_dtype)
