"""Seeds as a leading axis: S independent runs trained as one vmapped program.

A run of S seeds is given one PRNG key per seed, ``[S]`` keys, and its variables
and train states carry a leading ``[S]`` axis on every leaf. Training vmaps over
that axis (:func:`lwf_jax.train.train` with ``num_seeds``); inference passes,
which are cheap, run seed by seed through one compiled program.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp


def count(rng: jax.Array) -> int:
  """S for ``[S]`` keys; 0 for one key (a single run)."""
  return rng.shape[0] if rng.ndim else 0


def keys(seeds: Sequence[int]) -> jax.Array:
  """``[S]`` keys, ``jax.random.key(seed)`` for each seed."""
  return jnp.stack([jax.random.key(seed) for seed in seeds])


def split(rng: jax.Array, num: int) -> tuple[jax.Array, ...]:
  """``jax.random.split`` of one key, or of each of ``[S]`` keys: ``num`` keys, or
  ``num`` arrays of ``[S]`` keys (seed ``s`` of each from ``rng[s]``)."""
  if not rng.ndim:
    return tuple(jax.random.split(rng, num))
  return tuple(jax.vmap(lambda key: jax.random.split(key, num), out_axes=1)(rng))


def fold_in(rng: jax.Array, data: int) -> jax.Array:
  """``jax.random.fold_in`` of one key, or of each of ``[S]`` keys."""
  if rng.ndim:
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(rng, data)
  return jax.random.fold_in(rng, data)


def stack(trees: Sequence[Any]) -> Any:
  """Trees of one structure (one per seed) stacked on a new leading seed axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def take(tree: Any, seed: int) -> Any:
  """Seed ``seed``'s tree of a tree stacked by :func:`stack`."""
  return jax.tree.map(lambda leaf: leaf[seed], tree)
