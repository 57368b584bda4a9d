"""Ways to add a task to a trained network: LwF, its variants and the baselines.

Every method adds a task the same way, as the paper does for LwF:

1. record: if the method needs them, run the network once over the new task's
   training images in inference mode and keep every old head's logits (LwF) or
   the shared features (LFL) with their images;
2. grow: add a randomly initialised head for the new task;
3. warm up: train the new head alone, with the trunk and old heads frozen, on the
   new task's loss (the paper's warm-up);
4. train: the method's trainable parameters on its objective.

Methods differ only in data: which parameters train in step 4 (regular expressions
over parameter paths), which loss terms are on, and whether old data are used.
"""

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from lwf_jax import (
  augment,
  inference,
  models,
  optim,
  parallel,
  resume,
  tasks,
  train,
  trunks,
)
from lwf_jax import seeds as seeds_lib

# ``log(task, stage, step, metrics)``: the training metrics (see
# lwf_jax.train.train_step, plus ``learning_rate``) of ``stage`` ('from scratch',
# 'warm-up', 'train') of ``task``, every ``Recipe.log_every_steps`` steps.
Log = Callable[[str, str, int, dict[str, Any]], None]
NEW_HEAD = "heads/{new}/"  # ``{new}`` is replaced by the new task's escaped name
TRUNK_AND_NEW_HEAD = ("trunk/", NEW_HEAD)


@dataclasses.dataclass(frozen=True)
class Method:
  """What a method trains after the warm-up, and on what.

  Attributes:
    description: one line for tables and listings.
    trainable: regular expressions over parameter paths that train after the
      warm-up; ``{new}`` stands for the new task's head.
    teacher: where the old heads' distillation targets come from: ``None`` (no
      distillation), ``'recorded'`` (recorded once before training, the paper's
      LwF) or ``'online'`` (the old network run on every batch).
    warmup: train the new head alone first.
    old_data: also train each old head on its own task's training data.
    feature_penalty: keep the shared features close to the recorded ones (LFL).
    weight_penalty: keep the trunk's weights close to the old network's (L2).
    temperature_squared: scale the distillation loss by T**2 whatever the recipe.
    new_head_layers: hidden layers in the new head, each as wide as the trunk's
      features (the paper's two-layer head for feature extraction has one).
  """

  description: str
  trainable: tuple[str, ...]
  teacher: str | None = None
  warmup: bool = True
  old_data: bool = False
  feature_penalty: bool = False
  weight_penalty: bool = False
  temperature_squared: bool = False
  new_head_layers: int = 0


LWF = Method(
  "LwF: new-task loss + distillation of the recorded old-head outputs",
  trainable=(".*",),
  teacher="recorded",
)
METHODS: dict[str, Method] = {
  "lwf": LWF,
  "lwf_no_warmup": dataclasses.replace(
    LWF, description="LwF without the warm-up (paper Table 2b)", warmup=False
  ),
  "lwf_online": dataclasses.replace(
    LWF,
    description="LwF with an online teacher: old outputs computed on every batch",
    teacher="online",
  ),
  "lwf_t2": dataclasses.replace(
    LWF,
    description="LwF with the distillation loss scaled by T^2 (Hinton et al.)",
    temperature_squared=True,
  ),
  "fine_tuning": Method(
    "Fine-tuning: shared trunk and new head trained, old heads fixed",
    trainable=TRUNK_AND_NEW_HEAD,
  ),
  "fine_tuning_fc": Method(
    "Fine-tune FC: conv layers and old heads fixed, fc layers and new head trained",
    trainable=("trunk/fc", NEW_HEAD),
  ),
  "feature_extraction": Method(
    "Feature extraction: trunk and old heads frozen, a two-layer new head trained",
    trainable=(NEW_HEAD,),
    new_head_layers=1,
  ),
  "joint": Method(
    "Joint training: all parameters, on old and new data, each head on its own",
    trainable=(".*",),
    old_data=True,
  ),
  "lfl": Method(
    "LFL: fine-tuning + L2 distance of the shared features to the recorded ones",
    trainable=TRUNK_AND_NEW_HEAD,
    feature_penalty=True,
  ),
  "l2_soft": Method(
    "L2 soft constraint: fine-tuning + L2 distance of the trunk to the old trunk",
    trainable=TRUNK_AND_NEW_HEAD,
    weight_penalty=True,
  ),
}


def get_method(name: str) -> Method:
  """The method registered under ``name``."""
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
  return METHODS[name]


@dataclasses.dataclass(frozen=True)
class Schedule:
  """One training stage: how long and how fast."""

  num_epochs: int
  learning_rate: float

  def __post_init__(self):
    train.check_count("num_epochs", self.num_epochs, minimum=0)
    if isinstance(self.learning_rate, bool) or not isinstance(
      self.learning_rate, int | float | np.number
    ):
      raise ValueError(f"learning_rate must be a number, got {self.learning_rate!r}")
    if not 0 < self.learning_rate < math.inf:
      raise ValueError(
        f"learning_rate must be finite and > 0, got {self.learning_rate}"
      )


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Everything about training that is neither the network nor the data.

  ``objective`` holds LwF's distillation settings; ``lambda_features`` and
  ``lambda_weights`` the strengths of LFL's feature penalty and of the L2 weight
  penalty. Each method switches on the terms it uses. ``augmentation`` perturbs
  training images (its ``crop_size`` sets the first network's input size), and
  ``subtract_mean`` gives the first network the first task's mean pixel, which
  every later task is then normalised with.
  """

  warmup: Schedule
  main: Schedule
  batch_size: int = 64
  optimizer: str = "sgd"
  momentum: float = 0.9
  weight_decay: float = 5e-4
  objective: train.Objective = dataclasses.field(default_factory=train.Objective)
  lambda_features: float = 0.1
  lambda_weights: float = 0.01
  inference_batch_size: int = 500
  num_devices: int = 1  # local devices each batch is split over
  augmentation: augment.Augmentation = augment.NONE
  subtract_mean: bool = False
  log_every_steps: int = 0  # see ``log_every`` of lwf_jax.train.train

  def __post_init__(self):
    for name, kind in (
      ("warmup", Schedule),
      ("main", Schedule),
      ("objective", train.Objective),
      ("augmentation", augment.Augmentation),
      ("subtract_mean", bool | np.bool_),
    ):
      if not isinstance(getattr(self, name), kind):
        kind_name = getattr(kind, "__name__", str(kind))
        raise ValueError(f"{name} must be a {kind_name}, got {getattr(self, name)!r}")
    for name in ("momentum", "weight_decay", "lambda_features", "lambda_weights"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number, got {value!r}")
    train.check_count("batch_size", self.batch_size, minimum=1)
    train.check_count("inference_batch_size", self.inference_batch_size, minimum=1)
    train.check_count("log_every_steps", self.log_every_steps, minimum=0)
    train.check_count("num_devices", self.num_devices, minimum=1)
    if self.num_devices > jax.local_device_count():
      raise ValueError(
        f"num_devices {self.num_devices} exceeds the "
        f"{jax.local_device_count()} local devices"
      )
    if jax.process_count() > 1 and self.num_devices != jax.local_device_count():
      raise ValueError(
        f"num_devices {self.num_devices}: on several processes, each uses all its "
        f"{jax.local_device_count()} local devices"
      )
    global_devices = self.num_devices * jax.process_count()
    if self.batch_size % global_devices:
      raise ValueError(
        f"batch_size {self.batch_size} is not a multiple of the {global_devices} "
        "devices (num_devices on every process)"
      )
    if self.optimizer not in optim.OPTIMIZERS:
      raise ValueError(
        f"unknown optimizer {self.optimizer!r}; valid optimizers: "
        f"{', '.join(optim.OPTIMIZERS)}"
      )
    if not 0 <= self.momentum < 1:
      raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
    if not 0 <= self.weight_decay < math.inf:
      raise ValueError(f"weight_decay must be finite and >= 0, got {self.weight_decay}")
    for name in ("lambda_features", "lambda_weights"):
      if not 0 < getattr(self, name) < math.inf:
        raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)}")

  def stage_objective(
    self, method: Method, old_heads: Sequence[str]
  ) -> train.Objective:
    """The objective of ``method``'s main stage: its loss terms on, others off."""
    objective = self.objective
    return dataclasses.replace(
      objective,
      scale_by_temperature_squared=(
        objective.scale_by_temperature_squared or method.temperature_squared
      ),
      online_heads=tuple(old_heads) if method.teacher == "online" else (),
      lambda_features=self.lambda_features if method.feature_penalty else 0.0,
      lambda_weights=self.lambda_weights if method.weight_penalty else 0.0,
    )


def train_stage(
  model: models.MultiHeadNet,
  variables: models.Variables,
  data: train.Batch,
  *,
  trainable: Sequence[str],
  schedule: Schedule,
  recipe: Recipe,
  rng: jax.Array,
  desc: str,
  objective: train.Objective | None = None,
  reference: models.Variables | None = None,
  log: Callable[[int, dict[str, Any]], None] | None = None,
  checkpoints: resume.StageCheckpoints | None = None,
) -> models.Variables:
  """Trains the ``trainable`` leaves on ``data`` with a fresh optimizer.

  ``objective`` defaults to plain cross-entropy per task. ``[S]`` keys in ``rng``
  train S seeds as one vmapped program (see :mod:`lwf_jax.seeds`). ``log`` gets
  ``(step, metrics)`` every ``recipe.log_every_steps`` steps, the metrics with
  the ``learning_rate``. ``checkpoints`` starts the stage from its checkpoint,
  if any, and saves it during training.
  """
  if schedule.num_epochs == 0:
    return variables
  shuffle_rng, dropout_rng = seeds_lib.split(rng, 2)
  state = train.create_train_state(
    variables,
    trainable=trainable,
    learning_rate=schedule.learning_rate,
    optimizer=recipe.optimizer,
    momentum=recipe.momentum,
    weight_decay=recipe.weight_decay,
    dropout_rng=dropout_rng,
  )
  start_epoch = 0
  if checkpoints is not None:
    state, start_epoch = checkpoints.start(state, schedule.num_epochs)
    if start_epoch == schedule.num_epochs:  # done (or held by a later stage's)
      return {"params": state.params, "batch_stats": state.batch_stats}
  state, _ = train.train(
    state,
    data,
    model=model,
    objective=objective or train.Objective(),
    num_epochs=schedule.num_epochs,
    batch_size=recipe.batch_size,
    rng=shuffle_rng,
    reference=reference,
    desc=desc,
    num_devices=recipe.num_devices,
    augmentation=recipe.augmentation,
    num_seeds=seeds_lib.count(rng),
    log_every=recipe.log_every_steps,
    log=None
    if log is None
    else functools.partial(_with_learning_rate, log, schedule.learning_rate),
    start_epoch=start_epoch,
    checkpoint_every=checkpoints.every_steps if checkpoints else 0,
    checkpoint=checkpoints.save if checkpoints else None,
  )
  return {"params": state.params, "batch_stats": state.batch_stats}


def learn_first_task(
  trunk: str | nn.Module,
  task: tasks.Task,
  *,
  schedule: Schedule,
  recipe: Recipe,
  rng: jax.Array,
  log: Log | None = None,
) -> tuple[models.MultiHeadNet, models.Variables]:
  """Trains a network from scratch on one task (the paper's "original network").

  Args:
    trunk: a trunk module or the name of one in ``lwf_jax.trunks.TRUNKS``.
    task: the task.
    schedule: epochs and learning rate.
    recipe: the other settings.
    rng: PRNG key; ``[S]`` keys train S seeds as one vmapped program.
    log: receives the training metrics (see :data:`Log`).

  Returns:
    ``(model, variables)`` with one head, ``task.name``; with ``[S]`` keys, every
    leaf of the variables has a leading ``[S]`` axis (see :mod:`lwf_jax.seeds`).
  """
  _check_batch_size(task, recipe)
  if isinstance(trunk, str):
    trunk = trunks.make_trunk(trunk)
  init_rng, head_rng, train_rng = seeds_lib.split(rng, 3)
  model, variables = models.init_trunk(
    trunk,
    init_rng,
    input_shape(task.image_shape, recipe.augmentation),
    pixel_mean(task.train["image"]) if recipe.subtract_mean else (),
  )
  model, variables = models.add_head(
    model,
    variables,
    models.HeadSpec(task.name, task.num_classes, multi_label=task.multi_label),
    head_rng,
  )
  variables = train_stage(
    model,
    variables,
    {task.name: task.train},
    trainable=(".*",),
    schedule=schedule,
    recipe=recipe,
    rng=train_rng,
    desc=f"{task.name}: from scratch",
    log=_bind(log, task.name, "from scratch"),
  )
  return model, variables


def add_task(
  model: models.MultiHeadNet,
  variables: models.Variables,
  task: tasks.Task,
  *,
  method: Method,
  recipe: Recipe,
  rng: jax.Array,
  old_tasks: Sequence[tasks.Task] = (),
  progress: str = "",
  log: Log | None = None,
  checkpoints: resume.TaskCheckpoints | None = None,
) -> tuple[models.MultiHeadNet, models.Variables]:
  """Adds ``task`` to the network with ``method`` (see the module docstring).

  Args:
    model: the trained network.
    variables: its variables; never modified.
    task: the new task.
    method: how to add it.
    recipe: training settings.
    rng: PRNG key for the new head and for training; ``[S]`` keys for variables
      of S seeds (a leading ``[S]`` axis on every leaf, see
      :mod:`lwf_jax.seeds`), trained as one vmapped program and recorded seed by
      seed.
    old_tasks: the tasks of the existing heads; only read when the method uses old
      data, and then required for every head.
    progress: a label for the progress bars, such as the method's name.
    log: receives the training metrics of both stages (see :data:`Log`).
    checkpoints: checkpoint the stages, and resume the task from its checkpoint
      (recordings included) if it has one (see :mod:`lwf_jax.resume`).

  Returns:
    ``(grown_model, trained_variables)``.
  """
  if not isinstance(method, Method):
    raise ValueError(f"method must be a Method (see get_method), got {method!r}")
  old_heads = model.head_names
  _check_batch_size(task, recipe)
  if task.name in old_heads:
    raise ValueError(f"the network already has a head named {task.name!r}")
  check_images_fit(task, model)
  old_data = {}
  if method.old_data:
    for old in old_tasks:
      if old.name in old_heads:
        inference.check_task_fits(model, old)
    old_data = {t.name: t.train for t in old_tasks if t.name in old_heads}
    missing = sorted(set(old_heads) - set(old_data))
    if missing:
      raise ValueError(f"joint training needs the data of old heads {missing}")

  recorded = checkpoints.recorded() if checkpoints else None
  if recorded is None:
    recorded = record(
      model,
      variables,
      task,
      method=method,
      recipe=recipe,
      num_seeds=seeds_lib.count(rng),
    )
  new_split = {**task.train, **recorded}
  needs_reference = method.teacher == "online" or method.weight_penalty
  reference = variables if needs_reference else None

  head_rng, warmup_rng, main_rng = seeds_lib.split(rng, 3)
  hidden = (model.trunk.num_features,) * method.new_head_layers
  spec = models.HeadSpec(task.name, task.num_classes, hidden, task.multi_label)
  before = variables
  model, variables = models.add_head(model, variables, spec, head_rng)
  new_head = NEW_HEAD.replace("{new}", re.escape(task.name))

  def stage_checkpoints(stage: str) -> resume.StageCheckpoints | None:
    if checkpoints is None:
      return None
    return checkpoints.stage(stage, model, before=before, recorded=recorded)

  if method.warmup:
    variables = train_stage(
      model,
      variables,
      {task.name: task.train},
      trainable=(new_head,),
      schedule=recipe.warmup,
      recipe=recipe,
      rng=warmup_rng,
      desc=f"{progress} {task.name}: warm-up".strip(),
      log=_bind(log, task.name, "warm-up"),
      checkpoints=stage_checkpoints("warm-up"),
    )
  return model, train_stage(
    model,
    variables,
    {task.name: new_split, **old_data},
    trainable=tuple(p.replace("{new}", re.escape(task.name)) for p in method.trainable),
    schedule=recipe.main,
    recipe=recipe,
    rng=main_rng,
    desc=f"{progress} {task.name}: train".strip(),
    objective=recipe.stage_objective(method, old_heads),
    reference=reference,
    log=_bind(log, task.name, "train"),
    checkpoints=stage_checkpoints("train"),
  )


def record(
  model: models.MultiHeadNet,
  variables: models.Variables,
  task: tasks.Task,
  *,
  method: Method,
  recipe: Recipe,
  num_seeds: int,
) -> dict[str, Any]:
  """Step 1: what ``method`` records of the network on ``task``'s training images,
  as training-split entries: ``{'recorded': {old head: logits}}`` (LwF) and
  ``{'recorded_features': features}`` (LFL); ``{}`` for other methods."""
  distils = method.teacher == "recorded" and model.head_names
  if not (distils or method.feature_penalty):
    return {}
  prediction = predict_each_seed(
    model, variables, task.train["image"], recipe, num_seeds
  )
  recorded = {}
  if distils:
    recorded["recorded"] = prediction.logits
  if method.feature_penalty:
    recorded["recorded_features"] = prediction.features
  return recorded


def predict_each_seed(
  model: models.MultiHeadNet,
  variables: models.Variables,
  images: np.ndarray,
  recipe: Recipe,
  num_seeds: int,
) -> inference.Prediction:
  """:func:`lwf_jax.inference.predict`, seed by seed for ``num_seeds`` > 0 (one
  compiled program), the outputs stacked on a leading ``[num_seeds]`` axis."""
  predict = functools.partial(
    inference.predict,
    model,
    images=images,
    batch_size=recipe.inference_batch_size,
    num_devices=recipe.num_devices,
  )
  if not num_seeds:
    return predict(variables)
  outputs = [predict(seeds_lib.take(variables, s)) for s in range(num_seeds)]
  return jax.tree.map(lambda *rows: np.stack(rows), *outputs)


def _bind(log: Log | None, task: str, stage: str) -> Callable | None:
  """``log`` with the task and stage bound; ``None`` without a ``log``."""
  return None if log is None else functools.partial(log, task, stage)


def _with_learning_rate(log, learning_rate: float, step: int, metrics: dict) -> None:
  log(step, {**metrics, "learning_rate": learning_rate})


def input_shape(
  image_shape: tuple[int, ...], augmentation: augment.Augmentation
) -> tuple[int, ...]:
  """The network's input shape for stored images of ``image_shape``."""
  if not augmentation.crop_size:
    return tuple(image_shape)
  height, width, channels = image_shape
  # Recording and evaluation take the centre crop of the stored images (padding
  # is for training's random crops only), so the crop must fit inside them.
  if augmentation.crop_size > min(height, width):
    raise ValueError(
      f"crop_size {augmentation.crop_size} exceeds the {height}x{width} images"
    )
  return (augmentation.crop_size, augmentation.crop_size, channels)


def pixel_mean(images: np.ndarray) -> tuple[float, ...]:
  """The per-channel mean of ``[n, h, w, c]`` images, accumulated in float64;
  on several processes, of every process's shard together."""
  sums = np.sum(images, axis=(0, 1, 2), dtype=np.float64)
  totals = parallel.process_sum(np.append(sums, images[..., 0].size))
  return tuple((totals[:-1] / totals[-1]).tolist())


def check_images_fit(task: tasks.Task, model: models.MultiHeadNet) -> None:
  """Raises unless ``task``'s images have the network's channels and are at least
  its input size (larger ones are cropped)."""
  height, width, channels = task.image_shape
  want = model.image_shape
  if channels != want[2] or height < want[0] or width < want[1]:
    raise ValueError(
      f"task {task.name!r} has images of shape {task.image_shape}, the network "
      f"reads {want} (larger images are cropped; channels must match)"
    )


def _check_batch_size(task: tasks.Task, recipe: Recipe) -> None:
  if recipe.batch_size > len(task.train["label"]):
    raise ValueError(
      f"batch size {recipe.batch_size} exceeds the "
      f"{len(task.train['label'])} training examples of task {task.name!r}"
    )
