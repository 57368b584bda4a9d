"""Tasks added one after another, with every task evaluated after each.

The accuracy matrices are ``[T, T]``: ``R[i, j]`` is the test accuracy on task
``j`` after training task ``i`` (NaN for ``j > i``), in both scenarios: task-
incremental (the task is known, its head decides) and class-incremental (the
argmax over every head's classes).
"""

import functools
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from lwf_jax import inference, methods, models, resume, tasks
from lwf_jax import seeds as seeds_lib


class SequenceResult(NamedTuple):
  model: models.MultiHeadNet
  variables: models.Variables
  task_il: np.ndarray  # [T, T]; [S, T, T] for S seeds
  class_il: np.ndarray  # [T, T]; [S, T, T] for S seeds
  wall_time_s: float  # learning tasks 1..T-1 and evaluating, not the first task


def evaluate_row(
  model: models.MultiHeadNet,
  variables: models.Variables,
  task_list: Sequence[tasks.Task],
  *,
  batch_size: int,
  num_devices: int = 1,
) -> tuple[list[float], list[float]]:
  """Task- and class-incremental accuracy on each of ``task_list``."""
  scores = [
    inference.evaluate(
      model, variables, t, batch_size=batch_size, num_devices=num_devices
    )
    for t in task_list
  ]
  return [s["task_il"] for s in scores], [s["class_il"] for s in scores]


def learn_sequence(
  model: models.MultiHeadNet,
  variables: models.Variables,
  task_list: Sequence[tasks.Task],
  *,
  method: methods.Method,
  recipe: methods.Recipe,
  rng: jax.Array,
  progress: str = "",
  log: methods.Log | None = None,
  checkpoints: resume.RunCheckpoints | None = None,
) -> SequenceResult:
  """Adds ``task_list[1:]`` one at a time to a network that has learned task 0.

  Before each new task the method records what it needs (for LwF, every old head's
  outputs on the new task's images) afresh from the current network.

  Args:
    model: a network trained on ``task_list[0]`` (and with only its head).
    variables: its variables; never modified.
    task_list: the tasks, in order; the first is already learned.
    method: how each new task is added.
    recipe: training settings.
    rng: PRNG key; task ``i`` uses ``fold_in(rng, i)``. ``[S]`` keys learn S
      seeds at once, from ``variables`` with a leading ``[S]`` axis (see
      :mod:`lwf_jax.seeds`): training vmapped, evaluation seed by seed.
    progress: a label for the progress bars, such as the method's name.
    log: receives each stage's training metrics (see
      :data:`lwf_jax.methods.Log`) and, after task ``i``, with stage
      ``'evaluate'`` and step ``i``, ``{'task_il/<task>': ..., 'class_il/<task>':
      ...}`` for every task seen so far (``[S]`` arrays with seeds).
    checkpoints: checkpoint the run after each task and during training, and
      resume it from its latest checkpoint if it has one (see
      :mod:`lwf_jax.resume`); the result is the same as without a break.

  Returns:
    The final network and the accuracy matrices; ``wall_time_s`` counts every
    session of a resumed run.
  """
  if not task_list:
    raise ValueError("learn_sequence needs the tasks, the first already learned")
  tasks.check_task_sequence(task_list)
  if model.head_names != [task_list[0].name]:
    raise ValueError(
      f"the network must have learned only the first task {task_list[0].name!r}; "
      f"it has heads {model.head_names}"
    )
  num_tasks, num_seeds = len(task_list), seeds_lib.count(rng)
  shape = (num_seeds or 1, num_tasks, num_tasks)
  task_il, class_il = np.full(shape, np.nan), np.full(shape, np.nan)
  start = time.perf_counter()
  evaluate = functools.partial(
    evaluate_row,
    batch_size=recipe.inference_batch_size,
    num_devices=recipe.num_devices,
  )

  def evaluate_seeds(model, variables, row):
    for s in range(num_seeds or 1):
      seed_variables = seeds_lib.take(variables, s) if num_seeds else variables
      scores = evaluate(model, seed_variables, task_list[: row + 1])
      task_il[s, row, : row + 1], class_il[s, row, : row + 1] = scores
    if log is not None:
      scores = {}
      for j, task in enumerate(task_list[: row + 1]):
        for scenario, matrix in (("task_il", task_il), ("class_il", class_il)):
          values = matrix[:, row, j]
          scores[f"{scenario}/{task.name}"] = values if num_seeds else values[0]
      log(task_list[row].name, "evaluate", row, scores)

  saved = checkpoints.latest() if checkpoints else None
  if saved is None:
    first, elapsed = 1, 0.0
    evaluate_seeds(model, variables, 0)
  else:
    model, variables, first = _resumed(model, saved)
    task_il[...] = np.array(saved.metadata["summary"]["task_il"], float)
    class_il[...] = np.array(saved.metadata["summary"]["class_il"], float)
    elapsed = saved.metadata["summary"]["wall_time_s"]

  def summary() -> dict:
    return {
      "task_il": _json_matrix(task_il),
      "class_il": _json_matrix(class_il),
      "wall_time_s": elapsed + time.perf_counter() - start,
    }

  for i in range(first, num_tasks):
    resuming = saved is not None and saved.position.task == i
    task_checkpoints = checkpoints and resume.TaskCheckpoints(
      checkpoints, i, summary, saved if resuming else None
    )
    model, variables = methods.add_task(
      model,
      variables,
      task_list[i],
      method=method,
      recipe=recipe,
      rng=seeds_lib.fold_in(rng, i),
      old_tasks=task_list[:i],
      progress=progress,
      log=log,
      checkpoints=task_checkpoints,
    )
    evaluate_seeds(model, variables, i)
    if checkpoints:
      checkpoints.save_task(i, model, variables, summary())
  read_back = saved is not None and first == num_tasks  # took its time before
  wall_time_s = elapsed + (0.0 if read_back else time.perf_counter() - start)
  if not num_seeds:
    task_il, class_il = task_il[0], class_il[0]
  return SequenceResult(model, variables, task_il, class_il, wall_time_s)


def _resumed(
  model: models.MultiHeadNet, saved: resume.Saved
) -> tuple[models.MultiHeadNet, models.Variables, int]:
  """``(model, variables, first task to learn)`` from a run's latest checkpoint:
  after a task, the grown network; during one, the network before it."""
  arrays, position = saved.arrays(), saved.position
  if position.stage is None:
    return (
      model.clone(head_specs=saved.head_specs),
      arrays["variables"],
      position.task + 1,
    )
  before = model.clone(head_specs=saved.head_specs[:-1])
  return before, arrays["before"], position.task


def _json_matrix(matrix: np.ndarray) -> list:
  """Nested lists, NaN as ``None``."""
  return np.where(np.isnan(matrix), None, matrix).tolist()
