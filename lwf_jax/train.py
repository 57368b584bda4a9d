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
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import struct
from flax.training import train_state

from lwf_jax import augment, losses, models, optim, parallel, tasks
from lwf_jax import seeds as seeds_lib

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
    for name in ("temperature", "lambda_old", "lambda_features", "lambda_weights"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not isinstance(self.scale_by_temperature_squared, bool | np.bool_):
      raise ValueError(
        "scale_by_temperature_squared must be a bool, got "
        f"{self.scale_by_temperature_squared!r}"
      )
    if isinstance(self.online_heads, str) or not all(
      isinstance(h, str) for h in self.online_heads
    ):
      raise ValueError(
        f"online_heads must be a tuple of head names, got {self.online_heads!r}"
      )
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
    dropout_rng: PRNG key, folded with the step number at each step; ``[S]``
      keys for S seeds (see :mod:`lwf_jax.seeds`), whose ``variables`` then have
      a leading ``[S]`` axis.

  Returns:
    The train state; with ``[S]`` keys, one per seed on a leading axis.
  """
  if isinstance(trainable, str):
    raise ValueError(f"trainable is a sequence of patterns, got {trainable!r}")
  if isinstance(learning_rate, bool) or not (
    isinstance(learning_rate, int | float | np.number) and 0 < learning_rate < math.inf
  ):
    raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate!r}")
  tx = optim.make_optimizer(
    trainable=tuple(trainable),
    learning_rate=learning_rate,
    optimizer=optimizer,
    momentum=momentum,
    weight_decay=weight_decay,
  )
  optim.trainable_labels(variables["params"], trainable)  # raises on a bad pattern
  create = functools.partial(_create_train_state, tx=tx, trainable=tuple(trainable))
  return (jax.vmap(create) if dropout_rng.ndim else create)(variables, dropout_rng)


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
  return parallel.compile_step(
    functools.partial(
      train_step, model=model, objective=objective, augmentation=augmentation
    ),
    num_devices,
    donate_argnums=_donated_state(donate),
  )


def _donated_state(donate: bool | None) -> tuple[int, ...]:
  """The state's argument number to donate: by default on accelerators only."""
  if donate is None:
    donate = jax.default_backend() != "cpu"
  return (0,) if donate else ()


def train_epoch(
  state: TrainState,
  data: Batch,
  indices: Mapping[str, jax.Array],
  reference: models.Variables | None = None,
  **step_kwargs,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One epoch as one ``lax.scan`` of :func:`train_step` over on-device data.

  Args:
    state: the train state.
    data: ``{task: split}``, whole splits on the device.
    indices: ``{task: [steps, batch]}`` example indices of each step (see
      :func:`epoch_indices`); this device's columns under ``jax.pmap``.
    reference: see :func:`train_step`.
    **step_kwargs: ``model``, ``objective``, ``augmentation``, ``axis_name`` of
      :func:`train_step`.

  Returns:
    ``(state after the epoch, metrics of every step, each [steps])``.
  """

  def step(state, step_indices):
    return train_step(state, gather(data, step_indices), reference, **step_kwargs)

  return jax.lax.scan(step, state, dict(indices))


@functools.cache
def compiled_train_epoch(
  model: models.MultiHeadNet,
  objective: Objective,
  num_devices: int = 1,
  *,
  donate: bool | None = None,
  augmentation: augment.Augmentation = augment.NONE,
  seeds: bool = False,
):
  """:func:`train_epoch` compiled once per data shape, as
  :func:`compiled_train_step`; with ``seeds``, vmapped over a leading seed axis of
  the state, the indices, the reference and the data's :data:`PER_SEED` arrays
  (the images and labels are shared)."""

  def epoch(state, data, indices, reference, axis_name=None):
    run = functools.partial(
      train_epoch,
      model=model,
      objective=objective,
      augmentation=augmentation,
      axis_name=axis_name,
    )
    if seeds:
      data_axes = {
        task: {key: 0 if key in PER_SEED else None for key in split}
        for task, split in data.items()
      }
      run = jax.vmap(run, in_axes=(0, data_axes, 0, 0))
    return run(state, data, indices, reference)

  return parallel.compile_step(
    epoch, num_devices, donate_argnums=_donated_state(donate)
  )


PER_SEED = ("recorded", "recorded_features")  # a sub-batch's per-seed arrays


@functools.cache
def scans_fast(model: models.MultiHeadNet) -> bool:
  """Whether epochs as one ``lax.scan`` are fast on this backend for ``model``.

  On accelerators, always. XLA:CPU runs convolutions inside a loop body several
  times slower than outside one (jax-ml/jax#12868; the small CNN's step measured
  4x slower), so on a CPU only networks without convolutions scan.
  """
  if jax.default_backend() != "cpu":
    return True
  images = jnp.zeros((1, *model.image_shape), jnp.float32)
  init = functools.partial(model.init, train=False)
  jaxpr = jax.make_jaxpr(init)(jax.random.key(0), images)
  return "conv_general_dilated" not in _primitives(jaxpr.jaxpr)


def _primitives(jaxpr) -> set[str]:
  """Names of the primitives in ``jaxpr`` and every jaxpr nested in it."""
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for param in eqn.params.values():
      for sub in param if isinstance(param, tuple | list) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          names |= _primitives(inner)
  return names


def fits_on_devices(data: Batch, num_devices: int) -> bool:
  """Whether a copy of ``data`` on each of ``num_devices`` devices stays under
  :data:`SCAN_MAX_BYTES` in all, the limit for training epochs as one scan."""
  size = sum(leaf.nbytes for leaf in jax.tree.leaves(data))  # no host copy
  return size * num_devices <= SCAN_MAX_BYTES


SCAN_MAX_BYTES = 2 << 30


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
  return gather(data, {task: idx[step] for task, idx in indices.items()})


def gather(data: Batch, rows: Mapping[str, jax.Array]) -> Batch:
  """``{task: the rows ``rows[task]`` of every per-example array of that task}``."""
  return {task: _rows(data[task], task_rows) for task, task_rows in rows.items()}


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
  scan_epochs: bool | None = None,
  num_seeds: int = 0,
  log_every: int = 0,
  log: Callable[[int, dict[str, Any]], None] | None = None,
  start_epoch: int = 0,
  checkpoint_every: int = 0,
  checkpoint: Callable[[TrainState, int], None] | None = None,
) -> tuple[TrainState, dict[str, Any]]:
  """Trains for ``num_epochs`` epochs of the first task in ``data``.

  Args:
    state: the train state; its optimizer decides which leaves move. With
      ``num_seeds``, every leaf has a leading ``[num_seeds]`` axis.
    data: ``{task: split}``, whole splits (on the host or the device). An epoch is
      one pass over the first task's examples (the last partial batch dropped);
      every other task contributes ``batch_size`` examples to each step too.
      With ``num_seeds``, the :data:`PER_SEED` arrays (recordings) have a
      leading ``[num_seeds]`` axis; images and labels are shared.
    model: the network.
    objective: the loss.
    num_epochs: passes over the first task.
    batch_size: examples per task per step.
    rng: PRNG key for shuffling; ``[num_seeds]`` keys with ``num_seeds``.
    reference: the network before the new task (see :func:`train_step`); with
      ``num_seeds``, one per seed on a leading axis.
    desc: progress bar label.
    num_devices: local devices to split each global batch of ``batch_size``
      examples per task over; ``batch_size`` must be a multiple of all
      processes' devices.
    augmentation: see :func:`train_step`.
    scan_epochs: run each epoch as one compiled ``lax.scan`` (one dispatch per
      epoch) instead of a Python loop over compiled steps; the same steps either
      way. ``None``: whenever a copy of ``data`` per device fits in
      :data:`SCAN_MAX_BYTES` and :func:`scans_fast` holds (with ``num_seeds``,
      always).
    num_seeds: > 0 trains that many independent runs (their own states, shuffles
      and dropout) as one vmapped program; needs epochs as scans.
    log_every: call ``log`` every this many steps (counted from 1 over the whole
      stage) and at the last; 0: at the last step of each epoch.
    log: ``log(step, metrics)`` with one step's metrics on the host (floats;
      ``[num_seeds]`` arrays with seeds). A looped epoch fetches the metrics at
      each such step; a scanned epoch returns every step's and is logged after.

    start_epoch: resume a stage: ``state`` is its state after this many epochs,
      and training goes on from the next (the same steps as without a break:
      shuffles and dropout derive from ``rng``, the epoch and the state's step).
    checkpoint_every: with ``checkpoint``, after each epoch in which a multiple
      of this many steps (counted from 1 over the stage) falls, and whose every
      loss is finite, call ``checkpoint(state, epochs done)``.
    checkpoint: see ``checkpoint_every``.

  Metrics stay on the device between logs: the host waits on the device only
  to log and at the end of each epoch, where every step's loss is checked to
  be finite (``FloatingPointError`` naming the stage, epoch and step if not).

  Returns:
    ``(state, metrics of the last step)``; with ``num_seeds``, each metric is a
    ``[num_seeds]`` array.
  """
  sizes, steps, local_batch_size, scan_epochs = _check_arguments(
    state, data, model=model, objective=objective, batch_size=batch_size, rng=rng,
    reference=reference, num_devices=num_devices, scan_epochs=scan_epochs,
    num_seeds=num_seeds,
  )  # fmt: skip
  _check_loop(
    state,
    steps,
    num_epochs=num_epochs,
    start_epoch=start_epoch,
    log_every=log_every,
    checkpoint_every=checkpoint_every,
    checkpoint=checkpoint,
  )
  if jax.process_count() > 1:
    rng = seeds_lib.fold_in(rng, jax.process_index())
  shuffle = functools.partial(
    epoch_indices, sizes=sizes, steps=steps, batch_size=local_batch_size
  )
  if num_seeds:
    shuffle = jax.vmap(shuffle)
  state = parallel.replicate(state, num_devices)
  reference = parallel.replicate(reference, num_devices)
  compile_args = (model, objective, num_devices)
  host = functools.partial(_host_metrics, num_devices=num_devices)
  if scan_epochs:
    data = parallel.replicate(jax.device_put(data), num_devices)
    scan = compiled_train_epoch(
      *compile_args, augmentation=augmentation, seeds=bool(num_seeds)
    )

    def run_epoch(state, indices, log_steps, report):
      del log_steps, report  # logged from every step's metrics, after the epoch
      indices = parallel.shard_columns(indices, num_devices)
      state, every_step = scan(state, data, indices, reference)
      bar.update(steps)
      return state, host(every_step)  # [steps] per metric; [seeds, steps]

  else:
    data = jax.device_put(data)
    step_fn = compiled_train_step(*compile_args, augmentation=augmentation)

    def run_epoch(state, indices, log_steps, report):
      every_step = []
      for step in range(steps):
        batch = parallel.shard(take_batch(data, indices, step), num_devices)
        state, metrics = step_fn(state, batch, reference)
        every_step.append(metrics)
        bar.update()
        if step in log_steps and step < steps - 1:
          report(step, host_floats(host(metrics)))
      every_step = jax.device_get(every_step)
      return state, host(jax.tree.map(lambda *m: np.stack(m, -1), *every_step))

  metrics = {}
  bar = tqdm.tqdm(
    total=num_epochs * steps,
    initial=start_epoch * steps,
    desc=desc,
    unit="step",
    mininterval=0.1 if sys.stderr.isatty() else 30,  # redirected logs: few lines
  )
  with bar:
    for epoch in range(start_epoch, num_epochs):

      def report(step: int, metrics: dict, epoch: int = epoch) -> None:
        """Logs step ``step`` (from 0) of this epoch."""
        _check_finite(metrics["loss"], desc, epoch, step)
        if log is not None:
          log(epoch * steps + step + 1, metrics)

      log_steps = _logs_at(epoch, log_every=log_every, steps=steps, epochs=num_epochs)
      indices = shuffle(seeds_lib.fold_in(rng, epoch))
      state, every_step = run_epoch(state, indices, log_steps, report)
      _check_finite_steps(every_step["loss"], desc, epoch)
      for step in log_steps:
        if scan_epochs or step == steps - 1:  # a looped epoch logged the others
          report(step, _one_step(every_step, step, num_seeds))
      metrics = _one_step(every_step, steps - 1, num_seeds)
      # Without a refresh: a redraw waits for the bar's next update, which keeps
      # to its mininterval.
      bar.set_postfix(_loss_terms(metrics), refresh=False)
      if checkpoint and _passes_multiple(epoch * steps, steps, checkpoint_every):
        checkpoint(parallel.unreplicate(state, num_devices), epoch + 1)
  return parallel.unreplicate(state, num_devices), metrics


def _check_arguments(
  state, data, *, model, objective, batch_size, rng, reference, num_devices,
  scan_epochs, num_seeds
) -> tuple[dict[str, int], int, int, bool]:  # fmt: skip
  """:func:`train`'s checks; ``(sizes, steps, local batch size, scan_epochs)``."""
  parallel.check_num_devices(num_devices)
  check_count("batch size", batch_size, minimum=1)
  check_count("num_seeds", num_seeds, minimum=0)
  sizes = _check_data(data, model, num_seeds)
  steps, local_batch_size = _epoch_shape(sizes, batch_size, num_devices)
  _check_reference(objective, reference, model)
  if scan_epochs is None:
    scan_epochs = bool(num_seeds) or (
      fits_on_devices(data, num_devices) and scans_fast(model)
    )
  _check_seeds(num_seeds, scan_epochs, state, rng)
  return sizes, steps, local_batch_size, scan_epochs


def _check_loop(
  state: TrainState,
  steps: int,
  *,
  num_epochs: int,
  start_epoch: int,
  log_every: int,
  checkpoint_every: int,
  checkpoint: Callable | None,
) -> None:
  """The loop's counts; a resumed stage's state at ``start_epoch``'s first step."""
  for name, count in (
    ("num_epochs", num_epochs),
    ("log_every", log_every),
    ("checkpoint_every", checkpoint_every),
    ("start_epoch", start_epoch),
  ):
    check_count(name, count, minimum=0)
  if start_epoch > num_epochs:
    raise ValueError(f"start_epoch {start_epoch} exceeds num_epochs {num_epochs}")
  if not np.all(np.asarray(jax.device_get(state.step)) == start_epoch * steps):
    raise ValueError(
      f"start_epoch {start_epoch} needs a state at step {start_epoch * steps} "
      f"({steps} steps an epoch), got step {np.asarray(state.step)}"
    )
  if checkpoint_every and checkpoint is None:
    raise ValueError("checkpoint_every needs a checkpoint function")


def check_count(name: str, value: Any, *, minimum: int) -> None:
  """Raises ``ValueError`` unless ``value`` is an integer >= ``minimum``."""
  if isinstance(value, bool) or not isinstance(value, int | np.integer):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _passes_multiple(done: int, steps: int, every: int) -> bool:
  """Whether steps ``done + 1 .. done + steps`` hold a multiple of ``every`` > 0."""
  return bool(every) and (done + steps) // every > done // every


def _logs_at(epoch: int, *, log_every: int, steps: int, epochs: int) -> list[int]:
  """The steps of ``epoch`` (from 0) to log at: every ``log_every``-th step of the
  stage, counted from 1, and its last; with ``log_every`` 0, each epoch's last."""
  if not log_every:
    return [steps - 1]
  first = -(epoch * steps) % log_every or log_every  # steps to the next log
  at = list(range(first - 1, steps, log_every))
  if epoch == epochs - 1 and steps - 1 not in at:
    at.append(steps - 1)
  return at


def _host_metrics(metrics: dict, *, num_devices: int) -> dict[str, np.ndarray]:
  """Device 0's metrics, fetched to the host."""
  metrics = jax.device_get(parallel.unreplicate(metrics, num_devices))
  return {name: np.asarray(value) for name, value in metrics.items()}


def host_floats(metrics: dict) -> dict[str, float]:
  """``{name: float}`` of scalar metrics."""
  return {name: float(value) for name, value in metrics.items()}


def _check_data(
  data: Batch, model: models.MultiHeadNet, num_seeds: int = 0
) -> dict[str, int]:
  """Checks every split against its head; returns ``{task: examples}``."""
  if not data:
    raise ValueError("no training data: give at least one task's split")
  num_classes = {spec.name: spec.num_classes for spec in model.head_specs}
  multi_label = {spec.name: spec.multi_label for spec in model.head_specs}
  for task, split in data.items():
    if task not in num_classes:
      raise ValueError(
        f"no head for task {task!r}; the network has {list(num_classes)}"
      )
    unknown = sorted(set(split.get("recorded", {})) - set(num_classes))
    if unknown:
      raise ValueError(
        f"training data of {task!r}: recordings of heads {unknown} the network "
        f"does not have ({list(num_classes)})"
      )
    tasks.check_split(
      _first_seed(split, num_seeds, where=f"training data of {task!r}")
      if num_seeds
      else split,
      num_classes[task],
      where=f"training data of {task!r}",
      multi_label=multi_label[task],
    )
  return {task: len(split["label"]) for task, split in data.items()}


def _first_seed(split: dict, num_seeds: int, *, where: str) -> dict:
  """``split`` with the first seed's :data:`PER_SEED` arrays, once every one is
  checked to have ``num_seeds`` rows."""
  per_seed = {key: split[key] for key in PER_SEED if key in split}
  shapes = {np.shape(leaf)[:1] for leaf in jax.tree.leaves(per_seed)}
  if shapes - {(num_seeds,)}:
    raise ValueError(
      f"{where}: with num_seeds={num_seeds}, {sorted(per_seed)} need a leading "
      f"axis of {num_seeds}; got {sorted(shapes)}"
    )
  return {**split, **seeds_lib.take(per_seed, 0)}


def _check_reference(
  objective: Objective, reference: models.Variables | None, model: models.MultiHeadNet
) -> None:
  """The reference network an online teacher or a weight penalty needs."""
  unknown = sorted(set(objective.online_heads) - set(model.head_names))
  if unknown:
    raise ValueError(
      f"online teacher heads {unknown} are not heads of the network "
      f"({model.head_names})"
    )
  if not (objective.online_heads or objective.lambda_weights):
    return
  if reference is None:
    raise ValueError("an online teacher or a weight penalty needs reference variables")
  params = reference.get("params", {}) if isinstance(reference, Mapping) else {}
  missing = [
    f"heads/{h}" for h in objective.online_heads if h not in params.get("heads", {})
  ]
  if "trunk" not in params:
    missing.insert(0, "trunk")
  if missing:
    raise ValueError(f"the reference variables lack params {missing}")


def _epoch_shape(
  sizes: dict[str, int], batch_size: int, num_devices: int
) -> tuple[int, int]:
  """``(steps per epoch, examples per task per step on this process)``.

  On several processes each holds a shard of every task (see lwf_jax.parallel)
  and feeds its devices its part of each global batch, drawn from its shard.
  """
  num_processes = jax.process_count()
  if batch_size % (num_devices * num_processes):
    raise ValueError(
      f"batch size {batch_size} is not a multiple of the "
      f"{num_devices * num_processes} devices"
    )
  local_batch_size = batch_size // num_processes
  first = next(iter(sizes))
  steps = parallel.process_min(sizes[first]) // local_batch_size
  if steps == 0:
    raise ValueError(
      f"batch size {batch_size} exceeds the {sizes[first]} training examples of "
      f"task {first!r}"
    )
  return steps, local_batch_size


def _check_seeds(num_seeds: int, scan_epochs: bool, state: TrainState, rng) -> None:
  if not num_seeds:
    if rng.ndim:
      raise ValueError(f"one PRNG key expected without num_seeds, got {rng.shape}")
    return
  if not scan_epochs:
    raise ValueError("num_seeds needs epochs as scans (scan_epochs)")
  leading = {leaf.shape[:1] for leaf in jax.tree.leaves(state)} | {rng.shape}
  if leading != {(num_seeds,)}:
    raise ValueError(
      f"with num_seeds={num_seeds}, the state's leaves and rng need a leading "
      f"axis of {num_seeds}; got {sorted(leading)}"
    )


def _loss_terms(metrics: dict) -> dict[str, str]:
  """The progress bar's losses: the total, each task's cross-entropy and the
  distillation losses' sum."""
  terms = {k: v for k, v in metrics.items() if k == "loss" or k.startswith("ce/")}
  kl = [v for k, v in metrics.items() if k.startswith("kl/")]
  if kl:
    terms["kl"] = sum(kl)
  return {k: np.array2string(np.asarray(v), precision=4) for k, v in terms.items()}


def _one_step(every_step: dict, step: int, num_seeds: int) -> dict:
  """Step ``step``'s metrics of an epoch's: floats, or ``[num_seeds]`` arrays."""
  metrics = {name: values[..., step] for name, values in every_step.items()}
  return metrics if num_seeds else host_floats(metrics)


def _check_finite_steps(loss: np.ndarray, desc: str, epoch: int) -> None:
  """:func:`_check_finite` of an epoch's ``[steps]`` (or ``[seeds, steps]``)
  losses, naming its first non-finite step."""
  bad = ~np.isfinite(loss).reshape(-1, loss.shape[-1]).all(0)
  if bad.any():
    step = int(np.argmax(bad))
    _check_finite(loss[..., step], desc, epoch, step)


def _check_finite(loss: Any, desc: str, epoch: int, step: int) -> None:
  """Raises ``FloatingPointError`` unless ``loss`` (one step's) is finite;
  ``epoch`` and ``step`` count from 0 and are reported from 1."""
  loss = np.asarray(loss)
  if not np.all(np.isfinite(loss)):
    where = "" if loss.ndim == 0 else f" (seeds {np.flatnonzero(~np.isfinite(loss))})"
    raise FloatingPointError(
      f"{desc}: non-finite loss {loss} in epoch {epoch + 1}, step {step + 1}{where}"
    )
