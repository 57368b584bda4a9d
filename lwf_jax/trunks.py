"""Shared trunks: each maps ``[batch, height, width, channels]`` images to features.

Small trunks for the offline 28x28 digits, and the paper's networks: AlexNet (the
Caffe reference model the paper starts from, fc6 and fc7 shared, fc8 per task),
VGG-16, and ResNets with BatchNorm for CIFAR-size images.

Conventions, shared by every trunk:

- ``__call__(images, *, train)``: ``train`` turns dropout on and BatchNorm to batch
  statistics (whose running averages are then updated).
- The output is the last shared layer's activation *before* its dropout; the
  network applies ``dropout_rate`` to it on the way to the heads. So the features
  are the same in training and inference mode but for earlier layers' dropout,
  which keeps feature penalties (LFL) unbiased.
- ``num_features`` is the output width; layers are named ``conv*`` and ``fc*``, so
  that freeze patterns such as ``trunk/fc`` select the fully connected layers.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


def _dense(module: nn.Module) -> Callable[..., nn.Module]:
  return functools.partial(nn.Dense, dtype=module.dtype)


def _conv(module: nn.Module) -> Callable[..., nn.Module]:
  return functools.partial(nn.Conv, dtype=module.dtype)


def _batch_norm(module: nn.Module, train: bool) -> Callable[..., nn.Module]:
  return functools.partial(
    nn.BatchNorm,
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    dtype=module.dtype,
  )


class MLPTrunk(nn.Module):
  """Fully connected trunk: flatten, then Dense + ReLU per layer."""

  hidden_sizes: Sequence[int] = (400, 400)
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32

  @property
  def num_features(self) -> int:
    return self.hidden_sizes[-1]

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    x = images.reshape((images.shape[0], -1))
    for i, size in enumerate(self.hidden_sizes):
      if i > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.relu(_dense(self)(size, name=f"fc{i + 1}")(x))
    return x


def _check_size(images: jax.Array, smallest: int, name: str) -> None:
  if min(images.shape[1:3]) < smallest:
    raise ValueError(
      f"{name} needs images of at least {smallest}x{smallest} pixels, got "
      f"{images.shape[1]}x{images.shape[2]}"
    )


class CNNTrunk(nn.Module):
  """A small AlexNet: conv + ReLU + max-pool layers, then fc layers with dropout.

  As in the paper's AlexNet, the fully connected layers (its fc6 and fc7) belong to
  the shared trunk; only the last linear layer (fc8) is task specific.
  """

  conv_features: Sequence[int] = (16, 32)
  dense_features: Sequence[int] = (256, 256)
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32

  @property
  def num_features(self) -> int:
    return self.dense_features[-1]

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    _check_size(images, 2 ** len(self.conv_features), "this CNN")
    x = images
    for i, features in enumerate(self.conv_features):
      x = nn.relu(_conv(self)(features, (3, 3), name=f"conv{i + 1}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return _dense_stack(self, x, self.dense_features, first_index=1, train=train)


def _dense_stack(module, x, features, *, first_index, train):
  """Flatten, then fc + ReLU layers with dropout between them (not after the last)."""
  x = x.reshape((x.shape[0], -1))
  for i, width in enumerate(features):
    if i > 0:
      x = nn.Dropout(module.dropout_rate, deterministic=not train)(x)
    x = nn.relu(_dense(module)(width, name=f"fc{first_index + i}")(x))
  return x


def local_response_norm(
  x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> jax.Array:
  """AlexNet's across-channel normalisation, as Caffe computes it.

  ``x / (k + alpha / size * sum of x**2 over `size` neighbouring channels)**beta``.
  """
  squares = jnp.pad(x**2, [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)])
  window = sum(squares[..., i : i + x.shape[-1]] for i in range(size))
  return x / (k + alpha / size * window) ** beta


class AlexNet(nn.Module):
  """AlexNet as in Caffe's reference model (bvlc_alexnet), without fc8.

  conv1-conv5 with local response normalisation and grouped conv2/4/5 (the
  original two-GPU split), then fc6 and fc7 (4096 each, dropout 0.5); 227x227
  inputs. The head of each task is the paper's fc8. ``width`` scales every layer
  for tests.
  """

  width: float = 1.0
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32

  def _w(self, n: int) -> int:
    """A scaled width, even: grouped convolutions split channels in two."""
    return max(2, 2 * round(n * self.width / 2))

  @property
  def num_features(self) -> int:
    return self._w(4096)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    _check_size(images, 67, "AlexNet")
    pool = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2))
    x = _conv(self)(self._w(96), (11, 11), strides=4, padding="VALID", name="conv1")(
      images
    )
    x = pool(local_response_norm(nn.relu(x)))
    x = _conv(self)(
      self._w(256), (5, 5), padding=2, feature_group_count=2, name="conv2"
    )(x)
    x = pool(local_response_norm(nn.relu(x)))
    x = nn.relu(_conv(self)(self._w(384), (3, 3), padding=1, name="conv3")(x))
    x = _conv(self)(
      self._w(384), (3, 3), padding=1, feature_group_count=2, name="conv4"
    )(x)
    x = _conv(self)(
      self._w(256), (3, 3), padding=1, feature_group_count=2, name="conv5"
    )(nn.relu(x))
    x = pool(nn.relu(x))
    widths = (self._w(4096), self._w(4096))
    return _dense_stack(self, x, widths, first_index=6, train=train)


VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16(nn.Module):
  """VGG-16 (configuration D) without fc8: 13 3x3 convolutions in five blocks, each
  followed by 2x2 max-pooling, then fc6 and fc7 (4096 each, dropout 0.5); 224x224
  inputs. ``width`` scales every layer for tests."""

  width: float = 1.0
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32

  @property
  def num_features(self) -> int:
    return max(2, int(4096 * self.width))

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    _check_size(images, 32, "VGG-16")
    x = images
    for b, block in enumerate(VGG16_BLOCKS):
      for c, features in enumerate(block):
        conv = _conv(self)(
          max(2, int(features * self.width)), (3, 3), name=f"conv{b + 1}_{c + 1}"
        )
        x = nn.relu(conv(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    widths = (self.num_features, self.num_features)
    return _dense_stack(self, x, widths, first_index=6, train=train)


class BasicBlock(nn.Module):
  """Two 3x3 conv + BatchNorm layers and a shortcut (He et al., 2016).

  ``shortcut``: ``'projection'`` (a 1x1 conv + BatchNorm where the shape changes,
  ResNet-18) or ``'pad'`` (subsample and zero-pad the channels, parameter-free: the
  CIFAR ResNets' option A).
  """

  features: int
  strides: int = 1
  shortcut: str = "projection"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    norm = _batch_norm(self, train)
    y = _conv(self)(self.features, (3, 3), self.strides, use_bias=False, name="conv1")(
      x
    )
    y = nn.relu(norm(name="bn1")(y))
    y = _conv(self)(self.features, (3, 3), use_bias=False, name="conv2")(y)
    y = norm(name="bn2", scale_init=nn.initializers.zeros)(y)
    if x.shape[-1] != self.features or self.strides != 1:
      if self.shortcut == "projection":
        x = _conv(self)(
          self.features, (1, 1), self.strides, use_bias=False, name="conv_proj"
        )(x)
        x = norm(name="bn_proj")(x)
      else:
        x = x[:, :: self.strides, :: self.strides]
        extra = self.features - x.shape[-1]
        x = jnp.pad(x, [(0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)])
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A ResNet for CIFAR-size images: a 3x3 stem (no max-pooling), stages of basic
  blocks, global average pooling. The features are the pooled activations."""

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  stage_features: Sequence[int] = (64, 128, 256, 512)
  shortcut: str = "projection"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32  # computation dtype; parameters stay float32

  @property
  def num_features(self) -> int:
    return self.stage_features[-1]

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    _check_size(images, 2 ** (len(self.stage_sizes) - 1), "this ResNet")
    x = _conv(self)(self.stage_features[0], (3, 3), use_bias=False, name="conv_stem")(
      images
    )
    x = _batch_norm(self, train)(name="bn_stem")(x)
    x = nn.relu(x)
    for s, (blocks, features) in enumerate(
      zip(self.stage_sizes, self.stage_features, strict=True)
    ):
      for b in range(blocks):
        strides = 2 if s > 0 and b == 0 else 1
        x = BasicBlock(
          features,
          strides,
          self.shortcut,
          dtype=self.dtype,
          name=f"stage{s + 1}_block{b + 1}",
        )(x, train=train)
    return jnp.mean(x, axis=(1, 2))


TRUNKS: dict[str, Callable[[], nn.Module]] = {
  "mlp": MLPTrunk,  # 784-400-400, the MLP of van de Ven & Tolias' Split MNIST.
  "cnn": CNNTrunk,
  "alexnet": AlexNet,
  "vgg16": VGG16,
  # ResNet-18 for CIFAR-size images; ResNet-32 of He et al.'s CIFAR experiments.
  "resnet18": ResNet,
  "resnet32": functools.partial(
    ResNet, stage_sizes=(5, 5, 5), stage_features=(16, 32, 64), shortcut="pad"
  ),
  # Tiny variants of each, for tests.
  "mlp_tiny": functools.partial(MLPTrunk, hidden_sizes=(64,)),
  "cnn_tiny": functools.partial(CNNTrunk, conv_features=(8,), dense_features=(32,)),
  "alexnet_tiny": functools.partial(AlexNet, width=1 / 32),
  "vgg16_tiny": functools.partial(VGG16, width=1 / 32),
  "resnet18_tiny": functools.partial(
    ResNet, stage_sizes=(1, 1, 1, 1), stage_features=(4, 8, 8, 16)
  ),
  "resnet32_tiny": functools.partial(
    ResNet, stage_sizes=(1, 1, 1), stage_features=(4, 8, 16), shortcut="pad"
  ),
}


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def make_trunk(name: str, dtype: str = "float32") -> nn.Module:
  """Returns the trunk registered under ``name``, computing in ``dtype``.

  ``'bfloat16'`` is mixed precision for accelerators: the layers compute in
  bfloat16, parameters, BatchNorm statistics and losses stay float32.
  """
  if name not in TRUNKS:
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(TRUNKS)}")
  if dtype not in DTYPES:
    raise ValueError(
      f"unknown compute dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}"
    )
  return TRUNKS[name](dtype=DTYPES[dtype])
