"""Networks of a shared trunk and one classification head per task (Flax linen).

The parameter tree names its parts, so a checkpoint reads like the model::

    {'trunk': {...}, 'heads': {'<task>': {'out': {'kernel': ..., 'bias': ...}}, ...}}

A network is grown by :func:`add_head`, a pure function over that tree; every
forward pass goes through :func:`forward`.
"""

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from lwf_jax import tasks

Variables = dict[str, Any]  # {'params': ..., 'batch_stats': ...}


class HeadSpec(NamedTuple):
  """A task's head: its name, its classes, optional hidden layers, and whether its
  classes are independent (multi-label: one sigmoid per class) or exclusive."""

  name: str
  num_classes: int
  hidden_sizes: tuple[int, ...] = ()  # ReLU + dropout layers before the classifier
  multi_label: bool = False


class Head(nn.Module):
  """A task's classifier: optional hidden layers (ReLU, dropout), then ``out``."""

  num_classes: int
  hidden_sizes: Sequence[int] = ()
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
    x = features
    for i, size in enumerate(self.hidden_sizes):
      x = nn.relu(nn.Dense(size, name=f"fc{i + 1}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="out")(x)


class Heads(nn.Module):
  """One head per task over the shared features."""

  specs: tuple[HeadSpec, ...]

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    return {
      spec.name: Head(spec.num_classes, spec.hidden_sizes, name=spec.name)(
        features, train=train
      )
      for spec in self.specs
    }


class MultiHeadNet(nn.Module):
  """A shared trunk with one head per task; returns ``{task: [batch, classes]}``.

  Images (float32 or uint8) are cast to the trunk's compute dtype, less
  ``pixel_mean`` (the first task's mean pixel, which later tasks' images are
  normalised with too, as in the paper); images larger than ``image_shape`` are
  centre-cropped to it (the test-time view; training crops at random first, see
  :mod:`lwf_jax.augment`). The trunk's output (the shared features) is sown as
  ``intermediates/features`` (:func:`forward` returns it); the trunk's
  ``dropout_rate`` is applied to it on the way to the heads, which compute in
  float32 whatever the trunk's dtype.
  """

  trunk: nn.Module
  head_specs: tuple[HeadSpec, ...] = ()
  image_shape: tuple[int, ...] = ()  # (height, width, channels) of one input image
  pixel_mean: tuple[float, ...] = ()  # per channel, subtracted from every image

  @property
  def head_names(self) -> list[str]:
    return [spec.name for spec in self.head_specs]

  @nn.compact
  def __call__(
    self, images: jax.Array, *, train: bool, train_trunk: bool | None = None
  ) -> dict[str, jax.Array]:
    """Per-head logits.

    Args:
      images: ``[batch, height, width, channels]``.
      train: training mode (dropout on, BatchNorm on batch statistics).
      train_trunk: the trunk's mode, when it differs: a frozen trunk runs in
        inference mode (BatchNorm on its running statistics, no dropout inside)
        while the heads train. Defaults to ``train``.
    """
    train_trunk = train if train_trunk is None else train_trunk
    x = center_crop(images, self.image_shape[:2] or images.shape[1:3])
    x = x.astype(jnp.float32)
    if self.pixel_mean:
      x = x - jnp.asarray(self.pixel_mean, jnp.float32)
    x = x.astype(getattr(self.trunk, "dtype", jnp.float32))
    features = self.trunk(x, train=train_trunk)
    self.sow("intermediates", "features", features)
    features = nn.Dropout(self.trunk.dropout_rate, deterministic=not train)(features)
    return Heads(self.head_specs, name="heads")(
      features.astype(jnp.float32), train=train
    )


def center_crop(images: jax.Array, size: Sequence[int]) -> jax.Array:
  """The central ``size = (height, width)`` window of ``[batch, h, w, c]`` images."""
  height, width = images.shape[1:3]
  if height < size[0] or width < size[1]:
    raise ValueError(
      f"images of {height}x{width} pixels are smaller than the network's input "
      f"{size[0]}x{size[1]}"
    )
  top, left = (height - size[0]) // 2, (width - size[1]) // 2
  return images[:, top : top + size[0], left : left + size[1]]


def init_trunk(
  trunk: nn.Module,
  rng: jax.Array,
  image_shape: Sequence[int],
  pixel_mean: Sequence[float] = (),
) -> tuple:
  """Initialises a head-less network.

  Args:
    trunk: the shared trunk module.
    rng: PRNG key; ``[S]`` keys initialise S seeds, every leaf then with a
      leading ``[S]`` axis (see :mod:`lwf_jax.seeds`).
    image_shape: ``(height, width, channels)`` of the network's input.
    pixel_mean: per-channel mean subtracted from every image (see
      :class:`MultiHeadNet`); empty for none.

  Returns:
    ``(model, variables)`` with ``variables['params'] == {'trunk': ...}``.
  """
  model = MultiHeadNet(
    trunk=trunk,
    image_shape=tuple(image_shape),
    pixel_mean=tuple(float(m) for m in pixel_mean),
  )
  # One compiled program, not one per initializer as eager init would compile.
  init = functools.partial(model.init, train=False)
  if rng.ndim:
    init = jax.vmap(init, in_axes=(0, None))
  variables = jax.jit(init)(rng, jnp.zeros((1, *image_shape)))
  return model, {
    "params": variables["params"],
    "batch_stats": variables.get("batch_stats", {}),
  }


def add_head(
  model: MultiHeadNet,
  variables: Variables,
  spec: HeadSpec,
  rng: jax.Array,
) -> tuple[MultiHeadNet, Variables]:
  """Grows the network by a freshly initialised head.

  Pure: the returned tree shares every existing leaf with ``variables`` (so each
  stays bit-identical) and adds ``params['heads'][spec.name]``.

  Args:
    model: the network before growth.
    variables: its variables.
    spec: the new head; its name must be new and it needs at least 2 classes.
    rng: PRNG key for the new head's initialisation; ``[S]`` keys for variables
      of S seeds (see :func:`init_trunk`).

  Returns:
    ``(grown_model, grown_variables)``.
  """
  spec = HeadSpec(
    spec.name, int(spec.num_classes), tuple(spec.hidden_sizes), bool(spec.multi_label)
  )
  tasks.check_name(spec.name)
  if spec.name in model.head_names:
    raise ValueError(f"the network already has a head named {spec.name!r}")
  if spec.num_classes < 2:
    raise ValueError(
      f"head {spec.name!r} needs at least 2 classes, got {spec.num_classes}"
    )
  features = jnp.zeros((1, model.trunk.num_features))
  head = Head(spec.num_classes, spec.hidden_sizes)
  init = functools.partial(head.init, train=False)
  if rng.ndim:
    init = jax.vmap(init, in_axes=(0, None))
  head_params = jax.jit(init)(rng, features)["params"]
  params = dict(variables["params"])
  params["heads"] = {**params.get("heads", {}), spec.name: head_params}
  grown = model.clone(head_specs=(*model.head_specs, spec))
  return grown, {**variables, "params": params}


class Forward(NamedTuple):
  """What one forward pass gives."""

  logits: dict[str, jax.Array]  # {task: [batch, classes]}
  features: jax.Array  # [batch, features], the trunk's output
  batch_stats: Any  # BatchNorm statistics after the pass


def forward(
  model: MultiHeadNet,
  variables: Variables,
  images: jax.Array,
  *,
  train: bool,
  train_trunk: bool | None = None,
  dropout_rng: jax.Array | None = None,
) -> Forward:
  """Per-head logits and shared features of one forward pass.

  Args:
    model: the network.
    variables: ``{'params': ..., 'batch_stats': ...}`` (``batch_stats`` optional).
    images: ``[batch, height, width, channels]``.
    train: training mode (dropout on, BatchNorm on batch statistics) or inference
      mode (dropout off, BatchNorm on running statistics, nothing updated).
    train_trunk: the trunk's mode if it differs (see :class:`MultiHeadNet`).
    dropout_rng: PRNG key, required when ``train`` and the model uses dropout.

  Returns:
    The logits, the features, and the BatchNorm statistics: updated by this pass
    when ``train``, else unchanged.
  """
  batch_stats = variables.get("batch_stats", {})
  mutable = ["intermediates", "batch_stats"] if train else ["intermediates"]
  rngs = {"dropout": dropout_rng} if train and dropout_rng is not None else {}
  logits, state = model.apply(
    variables, images, train=train, train_trunk=train_trunk, rngs=rngs, mutable=mutable
  )
  (features,) = state["intermediates"]["features"]
  return Forward(logits, features, state.get("batch_stats", batch_stats))
