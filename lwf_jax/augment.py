"""Training-time augmentation on the device: random crops and mirroring.

The paper trains on random crops and mirror images of the stored (resized)
images, and records the old heads' responses, like every test-time pass, on the
un-augmented centre view (:func:`lwf_jax.models.center_crop`, applied by the
network to any image larger than its input). These functions run inside the
compiled train step, one independent draw per example.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """How training images are perturbed.

  Attributes:
    crop_size: the network's input size when it is smaller than the stored images
      (AlexNet's 227 from 256x256 images); ``0``: the stored size. Training
      crops at random, evaluation and recording take the centre.
    pad: zero pixels added on every side before the random crop (the CIFAR
      ResNets' 4).
    flip: mirror each image left to right with probability 1/2.
  """

  crop_size: int = 0
  pad: int = 0
  flip: bool = False

  def __post_init__(self):
    for name in ("crop_size", "pad"):
      value = getattr(self, name)
      integer = isinstance(value, int | np.integer) and not isinstance(value, bool)
      if not integer or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if not isinstance(self.flip, bool):
      raise ValueError(f"flip must be True or False, got {self.flip!r}")

  @property
  def active(self) -> bool:
    return bool(self.crop_size or self.pad or self.flip)


NONE = Augmentation()  # train on the stored images as they are


def random_crop(rng: jax.Array, images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """A uniformly placed ``size = (height, width)`` window of each image.

  Args:
    rng: PRNG key.
    images: ``[batch, h, w, c]`` with ``h >= height`` and ``w >= width``.
    size: the window.

  Returns:
    ``[batch, height, width, c]``.
  """
  batch, height, width, channels = images.shape
  tops = jax.random.randint(
    jax.random.fold_in(rng, 0), (batch,), 0, height - size[0] + 1
  )
  lefts = jax.random.randint(
    jax.random.fold_in(rng, 1), (batch,), 0, width - size[1] + 1
  )
  crop = lambda image, top, left: jax.lax.dynamic_slice(
    image, (top, left, 0), (*size, channels)
  )
  return jax.vmap(crop)(images, tops, lefts)


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
  """Each ``[batch, h, w, c]`` image mirrored left to right with probability 1/2."""
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def augment(
  rng: jax.Array,
  images: jax.Array,
  augmentation: Augmentation,
  size: tuple[int, int],
) -> jax.Array:
  """Pads, randomly crops to the network's input ``size`` and mirrors ``images``.

  Images no larger than ``size`` after padding are not cropped.
  """
  if augmentation.pad:
    p = augmentation.pad
    images = jnp.pad(images, [(0, 0), (p, p), (p, p), (0, 0)])
  if images.shape[1:3] != tuple(size):
    images = random_crop(jax.random.fold_in(rng, 0), images, size)
  if augmentation.flip:
    images = random_flip(jax.random.fold_in(rng, 1), images)
  return images
