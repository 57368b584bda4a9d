"""Training: the train state, the jit-compiled train step, and the epoch loop.

A batch is a dict of per-task sub-batches, ``{task: {'image', 'label', and
optionally 'recorded': {old head: logits}}}``. Each task's own head is trained on
its own images with :func:`lwf_jax.losses.lwf_objective`, which adds the
distillation loss of every recorded old head. That one form covers every method:
LwF is one sub-batch with recordings, fine-tuning one without, joint training one
sub-batch per task. All sub-batches share one forward pass.
"""

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import struct
from flax.training import train_state

from lwf_jax import losses, models, optim

Batch = dict[str, dict[str, Any]]


class TrainState(train_state.TrainState):
  """Parameters, optimizer state, BatchNorm statistics and the dropout key.

  ``trainable`` holds the regular expressions the optimizer was built with (see
  :mod:`lwf_jax.optim`); every other parameter, and the BatchNorm statistics of
  frozen layers, are returned untouched by each step.
  """

  batch_stats: Any
  dropout_rng: jax.Array
  trainable: tuple[str, ...] = struct.field(pytree_node=False, default=(".*",))

  def apply_gradients(self, *, grads, **kwargs) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optim.apply_updates(self.params, updates, self.trainable)
    return self.replace(
      step=self.step + 1, params=params, opt_state=opt_state, **kwargs
    )


@dataclasses.dataclass(frozen=True)
class Objective:
  """Hyperparameters of :func:`lwf_jax.losses.lwf_objective`."""

  lambda_old: float = 1.0
  temperature: float = 2.0
  scale_by_temperature_squared: bool = False

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature}")
    if not self.lambda_old >= 0:
      raise ValueError(f"lambda_old must be >= 0, got {self.lambda_old}")


def create_train_state(
  model: models.MultiHeadNet,
  variables: models.Variables,
  *,
  trainable: Sequence[str],
  learning_rate: float,
  momentum: float,
  weight_decay: float,
  dropout_rng: jax.Array,
) -> TrainState:
  """A train state with a fresh optimizer over copies of ``variables``.

  The copies make the state safe to donate: the caller's arrays (for example the
  old network, shared by several runs) are never invalidated.

  Args:
    model: the network.
    variables: its variables.
    trainable: regular expressions over parameter paths that train; the rest stay
      frozen (see :mod:`lwf_jax.optim`).
    learning_rate: SGD step size.
    momentum: SGD momentum.
    weight_decay: L2 coefficient.
    dropout_rng: PRNG key, folded with the step number at each step.

  Returns:
    The train state.
  """
  variables = jax.tree.map(jnp.copy, variables)
  tx = optim.make_optimizer(
    variables["params"],
    trainable=trainable,
    learning_rate=learning_rate,
    momentum=momentum,
    weight_decay=weight_decay,
  )
  return TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    tx=tx,
    dropout_rng=dropout_rng,
    trainable=tuple(trainable),
  )


def train_step(
  state: TrainState,
  batch: Batch,
  *,
  model: models.MultiHeadNet,
  objective: Objective,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on ``batch``; returns the new state and scalar metrics."""
  dropout_rng = jax.random.fold_in(state.dropout_rng, state.step)
  images = jnp.concatenate([sub["image"] for sub in batch.values()])

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    logits, batch_stats = models.head_logits(
      model, variables, images, train=True, dropout_rng=dropout_rng
    )
    per_task = _split_logits(logits, batch)
    loss = sum(
      losses.lwf_objective(
        per_task[task][task],
        sub["label"],
        {head: per_task[task][head] for head in sub.get("recorded", {})},
        sub.get("recorded", {}),
        **dataclasses.asdict(objective),
      ).mean()
      for task, sub in batch.items()
    )
    return loss, (per_task, batch_stats)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (per_task, batch_stats)), grads = grad_fn(state.params)
  batch_stats = optim.keep_frozen(batch_stats, state.batch_stats, state.trainable)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {"loss": loss, **batch_metrics(per_task, batch, objective.temperature)}
  return state, metrics


def _split_logits(logits: Mapping[str, jax.Array], batch: Batch) -> dict:
  """Cuts the shared forward pass back into ``{task: {head: logits}}``."""
  per_task, start = {}, 0
  for task, sub in batch.items():
    stop = start + len(sub["label"])
    per_task[task] = {head: value[start:stop] for head, value in logits.items()}
    start = stop
  return per_task


def batch_metrics(per_task: dict, batch: Batch, temperature: float) -> dict:
  """Per-task cross-entropy and accuracy, and each recorded head's KL drift."""
  metrics = {}
  for task, sub in batch.items():
    logits = per_task[task][task]
    metrics[f"ce/{task}"] = losses.cross_entropy(logits, sub["label"]).mean()
    metrics[f"accuracy/{task}"] = jnp.mean(jnp.argmax(logits, -1) == sub["label"])
    for head, recorded in sub.get("recorded", {}).items():
      kl = losses.distillation_kl(
        per_task[task][head], recorded, temperature=temperature
      )
      metrics[f"kl/{head}"] = kl.mean()
  return metrics


def epoch_indices(
  rng: jax.Array, sizes: Mapping[str, int], *, steps: int, batch_size: int
) -> dict[str, jax.Array]:
  """Shuffled example indices of one epoch, ``{task: [steps, batch_size]}``.

  Each task's indices are fresh permutations of its examples, concatenated until
  ``steps * batch_size`` are drawn, so every example of a task is seen equally
  often (to within one) whatever the tasks' sizes.
  """
  indices = {}
  for i, (task, size) in enumerate(sizes.items()):
    needed = steps * batch_size
    keys = jax.random.split(jax.random.fold_in(rng, i), -(-needed // size))
    perms = jnp.concatenate([jax.random.permutation(k, size) for k in keys])
    indices[task] = perms[:needed].reshape(steps, batch_size)
  return indices


@jax.jit
def take_batch(data: Batch, indices: Mapping[str, jax.Array], step: int) -> Batch:
  """Gathers step ``step`` of an epoch: every per-example array by the same index.

  Images, labels and recorded outputs of an example always move together.
  """
  return {task: _rows(data[task], idx[step]) for task, idx in indices.items()}


def _rows(split: dict, rows: jax.Array) -> dict:
  return jax.tree.map(lambda array: array[rows], split)


def train(
  state: TrainState,
  data: Batch,
  *,
  model: models.MultiHeadNet,
  objective: Objective,
  num_epochs: int,
  batch_size: int,
  rng: jax.Array,
  desc: str = "train",
) -> tuple[TrainState, dict[str, float]]:
  """Trains for ``num_epochs`` epochs of the first task in ``data``.

  Args:
    state: the train state; its optimizer decides which leaves move.
    data: ``{task: split}``, whole splits (on the host or the device). An epoch is
      one pass over the first task's examples (the last partial batch dropped);
      every other task contributes ``batch_size`` examples to each step too.
    model: the network.
    objective: loss hyperparameters.
    num_epochs: passes over the first task.
    batch_size: examples per task per step.
    rng: PRNG key for shuffling.
    desc: progress bar label.

  Returns:
    ``(state, metrics of the last step)``.
  """
  sizes = {task: len(split["label"]) for task, split in data.items()}
  first = next(iter(sizes))
  steps = sizes[first] // batch_size
  if steps == 0:
    raise ValueError(
      f"batch size {batch_size} exceeds the {sizes[first]} training examples of "
      f"task {first!r}"
    )
  data = jax.device_put(data)
  step_fn = jax.jit(
    functools.partial(train_step, model=model, objective=objective),
    donate_argnums=0,
  )
  metrics = {}
  with tqdm.tqdm(total=num_epochs * steps, desc=desc, unit="step") as bar:
    for epoch in range(num_epochs):
      indices = epoch_indices(
        jax.random.fold_in(rng, epoch), sizes, steps=steps, batch_size=batch_size
      )
      for step in range(steps):
        state, metrics = step_fn(state, take_batch(data, indices, step))
        bar.update()
      metrics = {name: float(value) for name, value in metrics.items()}
      if not np.isfinite(metrics["loss"]):
        raise FloatingPointError(
          f"{desc}: non-finite loss {metrics['loss']} in epoch {epoch + 1}"
        )
      bar.set_postfix(loss=f"{metrics['loss']:.4f}")
  return state, metrics
