"""Training: the train state, the jit-compiled train step, and the epoch loop.

A batch is a dict of per-task sub-batches::

    {task: {'image': [b, h, w, c], 'label': [b],
            'recorded': {old head: [b, classes]},    # optional: LwF
            'recorded_features': [b, features]}}     # optional: LFL

Each task's own head is trained on its own images with
:func:`lwf_jax.losses.lwf_objective`, which adds the distillation loss of every
recorded old head. That one form covers every method: LwF is one sub-batch with
recordings, fine-tuning one without, joint training one sub-batch per task. All
sub-batches share one forward pass. The optional ``reference`` variables (the
network before the new task) serve the online teacher and the weight penalty.
"""

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import struct
from flax.training import train_state

from lwf_jax import augment, losses, models, optim, parallel, tasks

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
  """The training loss beyond each task's cross-entropy.

  Attributes:
    lambda_old: weight of each old head's distillation loss (LwF's lambda_o).
    temperature: distillation temperature T.
    scale_by_temperature_squared: multiply distillation losses by T**2.
    online_heads: old heads whose targets come from the reference network run
      on every batch (an online teacher) instead of from recordings.
    lambda_features: weight of the shared-feature distance to the recorded
      features (LFL).
    lambda_weights: weight of the trunk's squared distance to the reference
      trunk (L2 soft constraint).
  """

  lambda_old: float = 1.0
  temperature: float = 2.0
  scale_by_temperature_squared: bool = False
  online_heads: tuple[str, ...] = ()
  lambda_features: float = 0.0
  lambda_weights: float = 0.0

  def __post_init__(self):
    if not 0 < self.temperature < math.inf:
      raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
    for name in ("lambda_old", "lambda_features", "lambda_weights"):
      if not 0 <= getattr(self, name) < math.inf:
        raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")

  @property
  def distillation(self) -> dict[str, Any]:
    """The keyword arguments of :func:`lwf_jax.losses.lwf_objective`."""
    return {
      "lambda_old": self.lambda_old,
      "temperature": self.temperature,
      "scale_by_temperature_squared": self.scale_by_temperature_squared,
    }


def create_train_state(
  variables: models.Variables,
  *,
  trainable: Sequence[str],
  learning_rate: float,
  optimizer: str = "sgd",
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  dropout_rng: jax.Array,
) -> TrainState:
  """A train state with a fresh optimizer over copies of ``variables``.

  The copies make the state safe to donate: the caller's arrays (for example the
  old network, shared by several runs) are never invalidated.

  Args:
    variables: the network's variables.
    trainable: regular expressions over parameter paths that train; the rest stay
      frozen (see :mod:`lwf_jax.optim`).
    learning_rate: step size.
    optimizer: ``'sgd'`` or ``'adam'``.
    momentum: SGD momentum.
    weight_decay: L2 coefficient.
    dropout_rng: PRNG key, folded with the step number at each step.

  Returns:
    The train state.
  """
  tx = optim.make_optimizer(
    trainable=tuple(trainable),
    learning_rate=learning_rate,
    optimizer=optimizer,
    momentum=momentum,
    weight_decay=weight_decay,
  )
  optim.trainable_labels(variables["params"], trainable)  # raises on a bad pattern
  return _create_train_state(variables, dropout_rng, tx=tx, trainable=tuple(trainable))


@functools.partial(jax.jit, static_argnames=("tx", "trainable"))
def _create_train_state(variables, dropout_rng, *, tx, trainable) -> TrainState:
  """Compiled once per shape: copying and zero-filling leaf by leaf eagerly would
  compile a program per leaf shape."""
  variables = jax.tree.map(jnp.copy, variables)
  return TrainState.create(
    apply_fn=None,
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    tx=tx,
    dropout_rng=dropout_rng,
    trainable=trainable,
  )


def train_step(
  state: TrainState,
  batch: Batch,
  reference: models.Variables | None = None,
  *,
  model: models.MultiHeadNet,
  objective: Objective,
  augmentation: augment.Augmentation = augment.NONE,
  axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on ``batch``; returns the new state and scalar metrics.

  Under ``jax.pmap`` with ``axis_name``, ``batch`` is this device's slice of the
  global batch; gradients, metrics and BatchNorm running statistics are averaged
  over devices, so every device takes the same step, and dropout masks differ.

  Args:
    state: the train state.
    batch: ``{task: sub-batch}`` (see the module docstring); the first task is
      the new one, whose images an online teacher sees.
    reference: the variables of the network before the new task, when the
      objective has online heads or a weight penalty.
    model: the network.
    objective: the loss terms and their weights.
    augmentation: random crops and mirroring of every task's images (an online
      teacher sees the student's augmented images; recordings were taken on the
      centre view).
    axis_name: the device axis when pmapped (see :mod:`lwf_jax.parallel`).

  Returns:
    ``(new state, {'loss', 'ce/<task>', 'accuracy/<task>', 'kl/<head>', ...})``.
  """
  dropout_rng = jax.random.fold_in(state.dropout_rng, state.step)
  dropout_rng = parallel.device_rng(dropout_rng, axis_name)
  if augmentation.active:
    batch = _augmented(batch, augmentation, model, jax.random.fold_in(dropout_rng, 1))
  # Tasks may store images of different sizes; the network reads the centre view.
  size = model.image_shape[:2]
  images = jnp.concatenate(
    [models.center_crop(sub["image"], size) for sub in batch.values()]
  )
  batch = _with_online_targets(batch, reference, model=model, objective=objective)
  # A frozen trunk runs in inference mode: BatchNorm on its running statistics.
  train_trunk = optim.trains_any(state.params, state.trainable, "trunk/")
  multi_label = frozenset(s.name for s in model.head_specs if s.multi_label)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    out = models.forward(
      model,
      variables,
      images,
      train=True,
      train_trunk=train_trunk,
      dropout_rng=dropout_rng,
    )
    per_task = _split_by_task(out, batch)
    loss = 0.0
    for task, sub in batch.items():
      logits, features = per_task[task]
      recorded = sub.get("recorded", {})
      loss += losses.lwf_objective(
        logits[task],
        sub["label"],
        {head: logits[head] for head in recorded},
        recorded,
        multi_label=task in multi_label,
        binary_heads=multi_label,
        **objective.distillation,
      ).mean()
      if "recorded_features" in sub:
        distance = losses.feature_distance(features, sub["recorded_features"])
        loss += objective.lambda_features * distance.mean()
    if objective.lambda_weights:
      distance = losses.weight_distance(params["trunk"], reference["params"]["trunk"])
      loss += objective.lambda_weights * distance
    return loss, (per_task, out.batch_stats)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (per_task, batch_stats)), grads = grad_fn(state.params)
  grads, batch_stats = parallel.pmean((grads, batch_stats), axis_name)
  batch_stats = optim.keep_frozen(batch_stats, state.batch_stats, state.trainable)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {
    "loss": loss,
    **batch_metrics(per_task, batch, objective.temperature, multi_label),
  }
  return state, parallel.pmean(metrics, axis_name)


def _augmented(
  batch: Batch,
  augmentation: augment.Augmentation,
  model: models.MultiHeadNet,
  rng: jax.Array,
) -> Batch:
  size = model.image_shape[:2]
  return {
    task: {
      **sub,
      "image": augment.augment(
        jax.random.fold_in(rng, i), sub["image"], augmentation, size
      ),
    }
    for i, (task, sub) in enumerate(batch.items())
  }


def _with_online_targets(
  batch: Batch, reference: Any, *, model: models.MultiHeadNet, objective: Objective
) -> Batch:
  """Adds the reference network's logits on the new task's images as targets."""
  if not objective.online_heads:
    return batch
  teacher = model.clone(
    head_specs=tuple(s for s in model.head_specs if s.name in objective.online_heads)
  )
  new_task, sub = next(iter(batch.items()))
  out = models.forward(teacher, reference, sub["image"], train=False)
  recorded = {head: jax.lax.stop_gradient(out.logits[head]) for head in out.logits}
  return {**batch, new_task: {**sub, "recorded": recorded}}


def _split_by_task(out: models.Forward, batch: Batch) -> dict:
  """Cuts the shared forward pass back into ``{task: (logits, features)}``."""
  per_task, start = {}, 0
  for task, sub in batch.items():
    stop = start + len(sub["label"])
    logits = {head: value[start:stop] for head, value in out.logits.items()}
    per_task[task] = (logits, out.features[start:stop])
    start = stop
  return per_task


def batch_metrics(
  per_task: dict,
  batch: Batch,
  temperature: float,
  multi_label: frozenset[str] = frozenset(),
) -> dict:
  """Per-task cross-entropy and accuracy, each recorded head's KL drift, and the
  feature distance where features are recorded.

  A multi-label task's cross-entropy is the binary one, and its accuracy that of
  each label's sign, averaged over labels.
  """
  metrics = {}
  for task, sub in batch.items():
    logits, features = per_task[task]
    if task in multi_label:
      metrics[f"ce/{task}"] = losses.binary_cross_entropy(
        logits[task], sub["label"]
      ).mean()
      correct = (logits[task] > 0) == (sub["label"] > 0)
    else:
      metrics[f"ce/{task}"] = losses.cross_entropy(logits[task], sub["label"]).mean()
      correct = jnp.argmax(logits[task], -1) == sub["label"]
    metrics[f"accuracy/{task}"] = jnp.mean(correct)
    for head, recorded in sub.get("recorded", {}).items():
      kl_fn = (
        losses.binary_distillation_kl if head in multi_label else losses.distillation_kl
      )
      kl = kl_fn(logits[head], recorded, temperature=temperature)
      metrics[f"kl/{head}"] = kl.mean()
    if "recorded_features" in sub:
      distance = losses.feature_distance(features, sub["recorded_features"])
      metrics["feature_distance"] = distance.mean()
  return metrics


@functools.cache
def compiled_train_step(
  model: models.MultiHeadNet,
  objective: Objective,
  num_devices: int = 1,
  donate: bool | None = None,
  augmentation: augment.Augmentation = augment.NONE,
):
  """:func:`train_step` bound to ``model``, ``objective`` and ``augmentation``,
  compiled once.

  ``jax.jit`` on one device, ``jax.pmap`` on several (see :mod:`lwf_jax.parallel`).
  Cached, so that stages with the same network and objective (other seeds, other
  methods) reuse the compiled program. ``donate`` (the state's buffers) defaults
  to accelerators only, where it saves a copy of the parameters and optimizer
  state; on the CPU donation measured twice as slow (the small CNN's step: 51
  against 27 ms).
  """
  if donate is None:
    donate = jax.default_backend() != "cpu"
  return parallel.compile_step(
    functools.partial(
      train_step, model=model, objective=objective, augmentation=augmentation
    ),
    num_devices,
    donate_argnums=(0,) if donate else (),
  )


def epoch_indices(
  rng: jax.Array, sizes: Mapping[str, int], *, steps: int, batch_size: int
) -> dict[str, jax.Array]:
  """Shuffled example indices of one epoch, ``{task: [steps, batch_size]}``.

  Each task's indices are fresh permutations of its examples, concatenated until
  ``steps * batch_size`` are drawn, so every example of a task is seen equally
  often (to within one) whatever the tasks' sizes.
  """
  return {
    task: _permutations(jax.random.fold_in(rng, i), size, steps, batch_size)
    for i, (task, size) in enumerate(sizes.items())
  }


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _permutations(rng: jax.Array, size: int, steps: int, batch_size: int) -> jax.Array:
  needed = steps * batch_size
  keys = jax.random.split(rng, -(-needed // size))
  perms = jax.vmap(lambda key: jax.random.permutation(key, size))(keys)
  return perms.reshape(-1)[:needed].reshape(steps, batch_size)


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
  reference: models.Variables | None = None,
  desc: str = "train",
  num_devices: int = 1,
  augmentation: augment.Augmentation = augment.NONE,
) -> tuple[TrainState, dict[str, float]]:
  """Trains for ``num_epochs`` epochs of the first task in ``data``.

  Args:
    state: the train state; its optimizer decides which leaves move.
    data: ``{task: split}``, whole splits (on the host or the device). An epoch is
      one pass over the first task's examples (the last partial batch dropped);
      every other task contributes ``batch_size`` examples to each step too.
    model: the network.
    objective: the loss.
    num_epochs: passes over the first task.
    batch_size: examples per task per step.
    rng: PRNG key for shuffling.
    reference: the network before the new task (see :func:`train_step`).
    desc: progress bar label.
    num_devices: local devices to split each global batch of ``batch_size``
      examples per task over; ``batch_size`` must be a multiple of all
      processes' devices.
    augmentation: see :func:`train_step`.

  Returns:
    ``(state, metrics of the last step)``.
  """
  num_classes = {spec.name: spec.num_classes for spec in model.head_specs}
  multi_label = {spec.name: spec.multi_label for spec in model.head_specs}
  for task, split in data.items():
    if task not in num_classes:
      raise ValueError(
        f"no head for task {task!r}; the network has {list(num_classes)}"
      )
    tasks.check_split(
      split,
      num_classes[task],
      where=f"training data of {task!r}",
      multi_label=multi_label[task],
    )
  sizes = {task: len(split["label"]) for task, split in data.items()}
  first = next(iter(sizes))
  # On several processes each holds a shard of every task (see lwf_jax.parallel)
  # and feeds its devices its part of each global batch, drawn from its shard.
  num_processes = jax.process_count()
  if batch_size % (num_devices * num_processes):
    raise ValueError(
      f"batch size {batch_size} is not a multiple of the "
      f"{num_devices * num_processes} devices"
    )
  local_batch_size = batch_size // num_processes
  steps = parallel.process_min(sizes[first]) // local_batch_size
  if steps == 0:
    raise ValueError(
      f"batch size {batch_size} exceeds the {sizes[first]} training examples of "
      f"task {first!r}"
    )
  if num_processes > 1:
    rng = jax.random.fold_in(rng, jax.process_index())
  needs_reference = objective.online_heads or objective.lambda_weights
  if needs_reference and reference is None:
    raise ValueError("an online teacher or a weight penalty needs reference variables")
  data = jax.device_put(data)
  step_fn = compiled_train_step(
    model, objective, num_devices, augmentation=augmentation
  )
  state = parallel.replicate(state, num_devices)
  reference = parallel.replicate(reference, num_devices)
  metrics = {}
  with tqdm.tqdm(total=num_epochs * steps, desc=desc, unit="step") as bar:
    for epoch in range(num_epochs):
      indices = epoch_indices(
        jax.random.fold_in(rng, epoch),
        sizes,
        steps=steps,
        batch_size=local_batch_size,
      )
      for step in range(steps):
        batch = parallel.shard(take_batch(data, indices, step), num_devices)
        state, metrics = step_fn(state, batch, reference)
        bar.update()
      metrics = parallel.unreplicate(metrics, num_devices)
      metrics = {name: float(value) for name, value in metrics.items()}
      if not np.isfinite(metrics["loss"]):
        raise FloatingPointError(
          f"{desc}: non-finite loss {metrics['loss']} in epoch {epoch + 1}"
        )
      bar.set_postfix(loss=f"{metrics['loss']:.4f}")
  return parallel.unreplicate(state, num_devices), metrics
