"""Data parallelism over devices and processes: the one module that knows of them.

A step runs on ``num_devices`` devices with ``jax.pmap`` over the axis
:data:`AXIS`: state is replicated, each device gets an equal slice of the global
batch, and gradients, metrics and BatchNorm running statistics are averaged with
``lax.pmean`` (counts summed with ``lax.psum``). With one device the same step
functions are ``jax.jit``-compiled instead and every collective is the identity,
so one code path serves both. BatchNorm normalises with each device's own batch
statistics during training, as in Flax's ImageNet example; only the running
averages are shared.

On several hosts (``jax.distributed.initialize``), every process holds its own
shard of each task's examples (:func:`process_shard`) and runs the same program:
a train step is pmapped over every process's devices, so its collectives span
them all, and each process feeds its devices ``batch_size / process_count``
examples of each global batch, drawn from its shard. Recording and evaluation
are process-local passes over the process's own shard (``local=True``); their
counts are summed across processes on the host (:func:`process_sum`).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import jax_utils
from jax.experimental import multihost_utils

AXIS = "batch"


def resolve_num_devices(requested: int) -> int:
  """``requested`` local devices, or all of them for 0; checked against JAX's."""
  available = jax.local_device_count()
  if isinstance(requested, bool) or not isinstance(requested, int | np.integer):
    raise ValueError(f"num_devices must be an integer, got {requested!r}")
  if not 0 <= requested <= available:
    raise ValueError(
      f"num_devices must be in [0, {available}] (0: all {available} local "
      f"devices), got {requested}"
    )
  return int(requested) or available


def check_num_devices(num_devices: int) -> None:
  """Raises ``ValueError`` unless ``num_devices`` is a count of local devices."""
  available = jax.local_device_count()
  if (
    isinstance(num_devices, bool)
    or not isinstance(num_devices, int | np.integer)
    or not 1 <= num_devices <= available
  ):
    raise ValueError(
      f"num_devices must be an integer in [1, {available}] (the local devices), "
      f"got {num_devices!r}"
    )


def compile_step(
  fn: Callable,
  num_devices: int,
  *,
  donate_argnums: tuple[int, ...] = (),
  local: bool = False,
) -> Callable:
  """``fn(..., axis_name=...)`` compiled for one device (jit) or several (pmap).

  Every positional argument is per device: replicated or sharded by the caller.
  ``local``: the collectives span this process's first ``num_devices`` devices
  only, and no other process takes part; otherwise, with several processes, they
  span every process's devices and every process must make the same calls.
  """
  check_num_devices(num_devices)
  if not pmapped(num_devices):
    return jax.jit(fn, donate_argnums=donate_argnums)
  spans_processes = jax.process_count() > 1 and not local
  if spans_processes and num_devices != jax.local_device_count():
    raise ValueError("on several hosts, every process must use all its local devices")
  return jax.pmap(
    lambda *args: fn(*args, axis_name=AXIS),
    axis_name=AXIS,
    devices=None if spans_processes else jax.local_devices()[:num_devices],
    donate_argnums=donate_argnums,
  )


def pmapped(num_devices: int) -> bool:
  """Whether steps over ``num_devices`` local devices are pmapped, their arguments
  stacked on a leading device axis: on several devices or several processes."""
  return num_devices > 1 or jax.process_count() > 1


def pmean(tree: Any, axis_name: str | None) -> Any:
  """The mean over devices, or ``tree`` itself outside a pmapped step."""
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def psum(tree: Any, axis_name: str | None) -> Any:
  """The sum over devices, or ``tree`` itself outside a pmapped step."""
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def device_rng(rng: jax.Array, axis_name: str | None) -> jax.Array:
  """A key of this device's own (dropout masks differ across devices)."""
  return (
    rng if axis_name is None else jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  )


def replicate(tree: Any, num_devices: int) -> Any:
  """A copy of ``tree`` on each device, stacked on a new leading axis."""
  if not pmapped(num_devices):
    return tree
  # New arrays, stacked, so donating the replicas never invalidates ``tree``.
  return jax_utils.replicate(tree, jax.local_devices()[:num_devices])


def unreplicate(tree: Any, num_devices: int) -> Any:
  """Device 0's copy of a replicated tree."""
  return jax.tree.map(lambda x: x[0], tree) if pmapped(num_devices) else tree


def shard(tree: Any, num_devices: int) -> Any:
  """Splits every ``[n, ...]`` leaf into ``[num_devices, n / num_devices, ...]``.

  Device ``d`` gets rows ``d * n / num_devices`` onwards, in order, so that
  :func:`unshard` restores the original order.
  """
  if not pmapped(num_devices):
    return tree

  def split(x):
    if x.shape[0] % num_devices:
      raise ValueError(
        f"cannot split {x.shape[0]} examples evenly over {num_devices} devices"
      )
    return x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:])

  return jax.tree.map(split, tree)


def shard_columns(tree: Any, num_devices: int) -> Any:
  """Splits the last axis of every ``[..., steps, n]`` leaf (an epoch's example
  indices) over the devices: ``[num_devices, ..., steps, n / num_devices]``.

  Device ``d`` gets columns ``d * n / num_devices`` onwards of each step, the same
  examples :func:`shard` gives it of that step's batch.
  """
  if not pmapped(num_devices):
    return tree

  def split(x):
    x = x.reshape(*x.shape[:-1], num_devices, x.shape[-1] // num_devices)
    return jnp.moveaxis(x, -2, 0)

  return jax.tree.map(split, tree)


def unshard(tree: Any, num_devices: int) -> Any:
  """Inverse of :func:`shard`: ``[devices, m, ...]`` leaves to ``[devices * m]``."""
  if not pmapped(num_devices):
    return tree
  return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), tree)


def pad_to_multiple(array: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
  """Zero rows appended to make ``len(array)`` a multiple; returns ``(padded, mask)``.

  ``mask`` is ``[len(padded)]`` booleans, True on the original rows.
  """
  padding = -len(array) % multiple
  padded = np.concatenate([array, np.zeros((padding, *array.shape[1:]), array.dtype)])
  mask = np.arange(len(padded)) < len(array)
  return padded, mask


def process_shard(task: Any) -> Any:
  """This process's shard of a task (:func:`lwf_jax.tasks.take_shard`): every
  ``process_count``-th example of both splits, from ``process_index`` on."""
  from lwf_jax import tasks

  return tasks.take_shard(task, jax.process_index(), jax.process_count())


def process_sum(values: np.ndarray) -> np.ndarray:
  """The sum of each process's ``values`` (host arrays of one shape)."""
  if jax.process_count() == 1:
    return np.asarray(values)
  return np.asarray(multihost_utils.process_allgather(np.asarray(values))).sum(0)


def process_min(value: int) -> int:
  """The smallest of each process's ``value``."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.min(multihost_utils.process_allgather(np.asarray(value))))


def process_concatenate(arrays: list[np.ndarray]) -> list[np.ndarray]:
  """Each of ``arrays`` (``[n_p, ...]`` on process ``p``) concatenated over the
  processes, in process order; the same on one process."""
  if jax.process_count() == 1:
    return [np.asarray(a) for a in arrays]
  lengths = multihost_utils.process_allgather(np.asarray(len(arrays[0])))
  longest = int(np.max(lengths))
  gathered = []
  for array in arrays:
    padded = np.zeros((longest, *array.shape[1:]), array.dtype)
    padded[: len(array)] = array
    every = np.asarray(multihost_utils.process_allgather(padded))
    gathered.append(
      np.concatenate([a[:n] for a, n in zip(every, lengths, strict=True)])
    )
  return gathered
