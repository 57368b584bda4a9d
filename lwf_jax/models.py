"""Networks of a shared trunk and one classification head per task (Flax linen).

The parameter tree names its parts, so a checkpoint reads like the model::

    {'trunk': {...}, 'heads': {'<task>': {'kernel': ..., 'bias': ...}, ...}}

A network is grown by :func:`add_head`, a pure function over that tree; every
per-head forward pass goes through :func:`head_logits`.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

Variables = dict[str, Any]  # {'params': ..., 'batch_stats': ...}
HeadSizes = tuple[tuple[str, int], ...]  # ((task name, number of classes), ...)


class MLPTrunk(nn.Module):
  """Fully connected trunk: flatten, then Dense + ReLU (+ dropout) per layer."""

  hidden_sizes: Sequence[int] = (400, 400)
  dropout_rate: float = 0.0

  @property
  def num_features(self) -> int:
    return self.hidden_sizes[-1]

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Maps ``[batch, height, width, channels]`` images to ``[batch, features]``."""
    x = images.reshape((images.shape[0], -1))
    for i, size in enumerate(self.hidden_sizes):
      x = nn.relu(nn.Dense(size, name=f"fc{i + 1}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return x


class CNNTrunk(nn.Module):
  """A small AlexNet: conv + ReLU + max-pool layers, then fc layers with dropout.

  As in the paper's AlexNet, the fully connected layers (its fc6 and fc7) belong to
  the shared trunk; only the last linear layer (fc8) is task specific.
  """

  conv_features: Sequence[int] = (16, 32)
  dense_features: Sequence[int] = (256, 256)
  dropout_rate: float = 0.5

  @property
  def num_features(self) -> int:
    return self.dense_features[-1]

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Maps ``[batch, height, width, channels]`` images to ``[batch, features]``."""
    x = images
    for i, features in enumerate(self.conv_features):
      x = nn.relu(nn.Conv(features, (3, 3), name=f"conv{i + 1}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for i, features in enumerate(self.dense_features):
      x = nn.relu(nn.Dense(features, name=f"fc{i + 1}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return x


class Heads(nn.Module):
  """One linear classifier per task over the shared features."""

  sizes: HeadSizes

  @nn.compact
  def __call__(self, features: jax.Array) -> dict[str, jax.Array]:
    return {name: nn.Dense(n, name=name)(features) for name, n in self.sizes}


class MultiHeadNet(nn.Module):
  """A shared trunk with one head per task; returns ``{task: [batch, classes]}``."""

  trunk: nn.Module
  head_sizes: HeadSizes = ()

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    return Heads(self.head_sizes, name="heads")(self.trunk(images, train=train))


TRUNKS: dict[str, Callable[..., nn.Module]] = {
  "mlp": MLPTrunk,  # 784-400-400, the MLP of van de Ven & Tolias' Split MNIST.
  "cnn": CNNTrunk,
  "mlp_tiny": functools.partial(MLPTrunk, hidden_sizes=(64,)),
  "cnn_tiny": functools.partial(CNNTrunk, conv_features=(8,), dense_features=(32,)),
}


def make_trunk(name: str) -> nn.Module:
  """Returns the trunk registered under ``name``."""
  if name not in TRUNKS:
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(TRUNKS)}")
  return TRUNKS[name]()


def init_trunk(trunk: nn.Module, rng: jax.Array, image_shape: Sequence[int]) -> tuple:
  """Initialises a head-less network.

  Args:
    trunk: the shared trunk module.
    rng: PRNG key.
    image_shape: ``(height, width, channels)`` of one image.

  Returns:
    ``(model, variables)`` with ``variables['params'] == {'trunk': ...}``.
  """
  model = MultiHeadNet(trunk=trunk)
  variables = model.init(rng, jnp.zeros((1, *image_shape)), train=False)
  return model, dict(variables)


def add_head(
  model: MultiHeadNet,
  variables: Variables,
  task: str,
  num_classes: int,
  rng: jax.Array,
) -> tuple[MultiHeadNet, Variables]:
  """Grows the network by a freshly initialised head for ``task``.

  Pure: the returned tree shares every existing leaf with ``variables`` (so each
  stays bit-identical) and adds ``params['heads'][task]``.

  Args:
    model: the network before growth.
    variables: its variables.
    task: name of the new head; must not exist yet.
    num_classes: the new head's number of outputs, ``>= 2``.
    rng: PRNG key for the new head's initialisation.

  Returns:
    ``(grown_model, grown_variables)``.
  """
  if task in dict(model.head_sizes):
    raise ValueError(f"the network already has a head named {task!r}")
  if num_classes < 2:
    raise ValueError(f"head {task!r} needs at least 2 classes, got {num_classes}")
  features = jnp.zeros((1, model.trunk.num_features))
  head = nn.Dense(num_classes).init(rng, features)["params"]
  params = dict(variables["params"])
  params["heads"] = {**params.get("heads", {}), task: head}
  grown = model.clone(head_sizes=(*model.head_sizes, (task, num_classes)))
  return grown, {**variables, "params": params}


def head_logits(
  model: MultiHeadNet,
  variables: Variables,
  images: jax.Array,
  *,
  train: bool,
  dropout_rng: jax.Array | None = None,
) -> tuple[dict[str, jax.Array], Any]:
  """Per-head logits of one forward pass.

  Args:
    model: the network.
    variables: ``{'params': ..., 'batch_stats': ...}`` (``batch_stats`` optional).
    images: ``[batch, height, width, channels]``.
    train: training mode (dropout on, BatchNorm on batch statistics) or inference
      mode (dropout off, BatchNorm on running statistics, nothing updated).
    dropout_rng: PRNG key, required when ``train`` and the model uses dropout.

  Returns:
    ``({task: [batch, classes]}, batch_stats)``: the BatchNorm statistics updated by
    this pass when ``train``, else unchanged.
  """
  batch_stats = variables.get("batch_stats", {})
  if not train:
    return model.apply(variables, images, train=False), batch_stats
  rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
  logits, updates = model.apply(
    variables, images, train=True, rngs=rngs, mutable=["batch_stats"]
  )
  return logits, updates.get("batch_stats", batch_stats)
