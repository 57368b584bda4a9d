"""Ways to add a task to a trained network: LwF and the paper's baselines.

Every method adds a task the same way, as the paper does for LwF:

1. record: if the method distills, run the network once over the new task's
   training images in inference mode and keep every old head's logits with their
   images;
2. grow: add a randomly initialised head for the new task;
3. warm up: train the new head alone, with the trunk and old heads frozen, on the
   new task's loss (the paper's warm-up; feature extraction is exactly this);
4. train: the method's trainable parameters on its objective.

Methods differ only in data: which parameters train in step 4 (regular expressions
over parameter paths), whether old heads are distilled, and whether old data are
used.
"""

import dataclasses
import re
from collections.abc import Sequence

import jax

from lwf_jax import inference, models, tasks, train

NEW_HEAD = "heads/{new}/"  # ``{new}`` is replaced by the new task's escaped name


@dataclasses.dataclass(frozen=True)
class Method:
  """What a method trains after the warm-up, and on what.

  Attributes:
    description: one line for tables and listings.
    trainable: regular expressions over parameter paths that train after the
      warm-up; ``{new}`` stands for the new task's head.
    distill: record the old heads' outputs and add their distillation loss.
    old_data: also train each old head on its own task's training data.
  """

  description: str
  trainable: tuple[str, ...]
  distill: bool = False
  old_data: bool = False


METHODS: dict[str, Method] = {
  "lwf": Method(
    "LwF: new-task loss + distillation of the recorded old-head outputs",
    trainable=(".*",),
    distill=True,
  ),
  "fine_tuning": Method(
    "Fine-tuning: shared trunk and new head trained, old heads fixed",
    trainable=("trunk/", NEW_HEAD),
  ),
  "feature_extraction": Method(
    "Feature extraction: trunk and old heads frozen, only the new head trained",
    trainable=(NEW_HEAD,),
  ),
  "joint": Method(
    "Joint training: all parameters, on old and new data, each head on its own",
    trainable=(".*",),
    old_data=True,
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
    if self.num_epochs < 0:
      raise ValueError(f"num_epochs must be >= 0, got {self.num_epochs}")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Everything about training that is neither the network nor the data."""

  warmup: Schedule
  main: Schedule
  batch_size: int = 64
  momentum: float = 0.9
  weight_decay: float = 5e-4
  objective: train.Objective = dataclasses.field(default_factory=train.Objective)
  inference_batch_size: int = 500

  def __post_init__(self):
    for name in ("batch_size", "inference_batch_size"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
    if self.weight_decay < 0:
      raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


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
) -> models.Variables:
  """Trains the ``trainable`` leaves on ``data`` with a fresh optimizer."""
  if schedule.num_epochs == 0:
    return variables
  shuffle_rng, dropout_rng = jax.random.split(rng)
  state = train.create_train_state(
    model,
    variables,
    trainable=trainable,
    learning_rate=schedule.learning_rate,
    momentum=recipe.momentum,
    weight_decay=recipe.weight_decay,
    dropout_rng=dropout_rng,
  )
  state, _ = train.train(
    state,
    data,
    model=model,
    objective=recipe.objective,
    num_epochs=schedule.num_epochs,
    batch_size=recipe.batch_size,
    rng=shuffle_rng,
    desc=desc,
  )
  return {"params": state.params, "batch_stats": state.batch_stats}


def learn_first_task(
  trunk_name: str,
  task: tasks.Task,
  *,
  schedule: Schedule,
  recipe: Recipe,
  rng: jax.Array,
) -> tuple[models.MultiHeadNet, models.Variables]:
  """Trains a network from scratch on one task (the paper's "original network")."""
  _check_batch_size(task, recipe)
  init_rng, head_rng, train_rng = jax.random.split(rng, 3)
  model, variables = models.init_trunk(
    models.make_trunk(trunk_name), init_rng, task.image_shape
  )
  model, variables = models.add_head(
    model, variables, task.name, task.num_classes, head_rng
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
) -> tuple[models.MultiHeadNet, models.Variables]:
  """Adds ``task`` to the network with ``method`` (see the module docstring).

  Args:
    model: the trained network.
    variables: its variables; never modified.
    task: the new task.
    method: how to add it.
    recipe: training settings.
    rng: PRNG key for the new head and for training.
    old_tasks: the tasks of the existing heads; only read when the method uses old
      data, and then required for every head.

  Returns:
    ``(grown_model, trained_variables)``.
  """
  old_heads = [name for name, _ in model.head_sizes]
  _check_batch_size(task, recipe)
  if task.name in old_heads:
    raise ValueError(f"the network already has a head named {task.name!r}")
  old_data = {}
  if method.old_data:
    old_data = {t.name: t.train for t in old_tasks if t.name in old_heads}
    missing = sorted(set(old_heads) - set(old_data))
    if missing:
      raise ValueError(f"joint training needs the data of old heads {missing}")

  new_split = dict(task.train)
  if method.distill and old_heads:
    new_split["recorded"] = inference.record_outputs(
      model,
      variables,
      task.train["image"],
      heads=old_heads,
      batch_size=recipe.inference_batch_size,
    )

  head_rng, warmup_rng, main_rng = jax.random.split(rng, 3)
  model, variables = models.add_head(
    model, variables, task.name, task.num_classes, head_rng
  )
  new_head = NEW_HEAD.replace("{new}", re.escape(task.name))
  variables = train_stage(
    model,
    variables,
    {task.name: task.train},
    trainable=(new_head,),
    schedule=recipe.warmup,
    recipe=recipe,
    rng=warmup_rng,
    desc=f"{task.name}: warm-up",
  )
  variables = train_stage(
    model,
    variables,
    {task.name: new_split, **old_data},
    trainable=tuple(p.replace("{new}", re.escape(task.name)) for p in method.trainable),
    schedule=recipe.main,
    recipe=recipe,
    rng=main_rng,
    desc=f"{task.name}: train",
  )
  return model, variables


def _check_batch_size(task: tasks.Task, recipe: Recipe) -> None:
  if recipe.batch_size > len(task.train["label"]):
    raise ValueError(
      f"batch size {recipe.batch_size} exceeds the "
      f"{len(task.train['label'])} training examples of task {task.name!r}"
    )
