"""The optimizer, with frozen parameters expressed as data.

The paper trains with SGD, momentum 0.9 and weight decay (an L2 term added to the
gradient, as Caffe does). Which parameters train is a list of regular expressions
over parameter paths such as ``trunk/conv1/kernel`` or ``heads/mnist5k/bias``;
``optax.multi_transform`` routes every other leaf to ``optax.set_to_zero``, so no
momentum or weight decay can move a frozen leaf, and its gradient is never used.
:func:`apply_updates` then leaves frozen leaves out of the addition altogether:
``p + 0.0`` is not ``p`` bit for bit when ``p`` is ``-0.0``, or subnormal on a
CPU that flushes subnormals to zero, as XLA's does.
"""

import functools
import re
from collections.abc import Sequence
from typing import Any

import jax
import optax

TRAINABLE, FROZEN = "trainable", "frozen"


def param_paths(params: Any) -> Any:
  """A tree like ``params`` whose leaves are their ``'/'``-joined paths."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: "/".join(str(getattr(k, "key", k)) for k in path), params
  )


def trainable_labels(params: Any, trainable: Sequence[str]) -> Any:
  """Labels each leaf ``'trainable'`` or ``'frozen'``.

  Args:
    params: the parameter tree.
    trainable: regular expressions; a leaf trains when one matches the start of
      its path (``re.match``).

  Returns:
    A tree like ``params`` of labels.

  Raises:
    ValueError: a pattern matches no parameter (a typo would freeze silently).
  """
  paths = jax.tree.leaves(param_paths(params))
  for pattern in trainable:
    if not any(re.match(pattern, path) for path in paths):
      shown = ", ".join(paths[:12]) + (
        f", ... ({len(paths)} in all)" * (len(paths) > 12)
      )
      raise ValueError(
        f"trainable pattern {pattern!r} matches no parameter; parameters: {shown}"
      )
  return jax.tree.map(
    lambda path: TRAINABLE if any(re.match(p, path) for p in trainable) else FROZEN,
    param_paths(params),
  )


OPTIMIZERS = ("sgd", "adam")


@functools.cache
def make_optimizer(
  *,
  trainable: tuple[str, ...],
  learning_rate: float,
  optimizer: str = "sgd",
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
) -> optax.GradientTransformation:
  """An optimizer for the trainable leaves; the rest frozen.

  The same settings give the same optimizer object, so a compiled train step is
  reused (not recompiled) wherever a stage repeats its settings and shapes.

  Args:
    trainable: regular expressions over parameter paths (see
      :func:`trainable_labels`).
    learning_rate: step size.
    optimizer: ``'sgd'`` (heavy-ball momentum, as in the paper) or ``'adam'``.
    momentum: SGD momentum; unused by Adam.
    weight_decay: L2 coefficient added to the gradient of trainable leaves before
      the optimizer (Caffe's weight decay; with Adam, PyTorch's ``weight_decay``).

  Returns:
    The optimizer.
  """
  if optimizer not in OPTIMIZERS:
    raise ValueError(
      f"unknown optimizer {optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}"
    )
  if optimizer == "sgd":
    inner = optax.sgd(learning_rate, momentum=momentum or None)
  else:
    inner = optax.adam(learning_rate)
  return optax.multi_transform(
    {
      TRAINABLE: optax.chain(optax.add_decayed_weights(weight_decay), inner),
      FROZEN: optax.set_to_zero(),
    },
    functools.partial(trainable_labels, trainable=trainable),
  )


def trains_any(params: Any, trainable: Sequence[str], prefix: str) -> bool:
  """Whether any leaf whose path starts with ``prefix`` is trainable."""
  paths = [p for p in jax.tree.leaves(param_paths(params)) if p.startswith(prefix)]
  return any(re.match(pattern, path) for pattern in trainable for path in paths)


def apply_updates(params: Any, updates: Any, trainable: Sequence[str]) -> Any:
  """``optax.apply_updates`` on trainable leaves; frozen leaves returned as they are.

  Args:
    params: the parameter tree.
    updates: the optimizer's updates, a tree like ``params``.
    trainable: the regular expressions the optimizer was built with.

  Returns:
    The updated parameters; every frozen leaf is the input leaf itself.
  """
  labels = trainable_labels(params, trainable)
  return jax.tree.map(
    lambda label, p, u: optax.apply_updates(p, u) if label == TRAINABLE else p,
    labels,
    params,
    updates,
  )


def keep_frozen(new: Any, old: Any, trainable: Sequence[str]) -> Any:
  """Takes ``new`` leaves on trainable paths and ``old`` leaves elsewhere.

  For state that is not optimised but belongs to frozen layers, such as BatchNorm
  running statistics: a frozen trunk keeps its statistics as well as its weights.
  """
  return jax.tree.map(
    lambda path, n, o: n if any(re.match(p, path) for p in trainable) else o,
    param_paths(new),
    new,
    old,
  )
