"""The paper's single-new-task protocol (Table 1).

1. Train the "original network" on the old task from scratch, once; it is kept in
   ``<workdir>/original_network`` so every method, and every later run with the
   same settings, starts from the same network.
2. Add the new task with each method.
3. Evaluate both tasks' test accuracy for each method; print the table and write
   ``results.json`` (with the config) and ``results.md`` into the work directory.
"""

import functools
import json
import os
import time

import jax
import ml_collections

from experiments import report
from lwf_jax import checkpoints, datasets, inference, methods, models, tasks, train

ORIGINAL_DIR = "original_network"


def load_task(task_config: ml_collections.ConfigDict) -> tasks.Task:
  """The task a config's ``old_task`` or ``new_task`` entry describes."""
  return datasets.load_task(
    task_config.dataset,
    name=task_config.name or None,
    classes=tuple(task_config.classes) or None,
    max_train_per_class=task_config.max_train_per_class,
  )


def make_recipe(config: ml_collections.ConfigDict) -> methods.Recipe:
  """The training settings of a config."""
  return methods.Recipe(
    warmup=methods.Schedule(**config.warmup),
    main=methods.Schedule(**config.train),
    batch_size=config.batch_size,
    momentum=config.momentum,
    weight_decay=config.weight_decay,
    objective=train.Objective(**config.lwf),
    inference_batch_size=config.inference_batch_size,
  )


def original_settings(config: ml_collections.ConfigDict) -> dict:
  """The settings that determine the original network, stored beside it as JSON."""
  settings = {
    "seed": config.seed,
    "model": config.model,
    "old_task": config.old_task.to_dict(),
    "schedule": config.original.to_dict(),
    "batch_size": config.batch_size,
    "momentum": config.momentum,
    "weight_decay": config.weight_decay,
  }
  return json.loads(json.dumps(settings))  # as read back: tuples become lists


def original_network(
  config: ml_collections.ConfigDict, old_task: tasks.Task, workdir: str
) -> tuple[models.MultiHeadNet, models.Variables]:
  """Loads the original network from ``workdir``, or trains and saves it."""
  directory = os.path.join(workdir, ORIGINAL_DIR)
  settings = original_settings(config)
  model = models.MultiHeadNet(
    trunk=models.make_trunk(config.model),
    head_sizes=((old_task.name, old_task.num_classes),),
  )
  if os.path.exists(directory):
    variables, saved = checkpoints.load(directory)
    if saved != settings:
      changed = sorted(k for k in settings if saved.get(k) != settings[k])
      raise ValueError(
        f"the original network in {directory} was trained with other settings "
        f"({', '.join(changed)}); use another --workdir or delete that directory"
      )
    return model, variables
  model, variables = methods.learn_first_task(
    config.model,
    old_task,
    schedule=methods.Schedule(**config.original),
    recipe=make_recipe(config),
    rng=jax.random.key(config.seed),
  )
  checkpoints.save(directory, variables, settings)
  return model, variables


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ``ValueError`` on settings that would fail later, before any work."""
  for name in config.methods:
    methods.get_method(name)
  if not config.methods:
    raise ValueError("config.methods is empty")
  models.make_trunk(config.model)
  make_recipe(config)
  methods.Schedule(**config.original)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the protocol and returns the results written to ``results.json``."""
  check_config(config)
  old_task, new_task = load_task(config.old_task), load_task(config.new_task)
  tasks.check_task_sequence([old_task, new_task])
  recipe = make_recipe(config)
  for task in (old_task, new_task):
    if recipe.batch_size > len(task.train["label"]):
      raise ValueError(
        f"batch size {recipe.batch_size} exceeds the {len(task.train['label'])} "
        f"training examples of task {task.name!r}"
      )
  os.makedirs(workdir, exist_ok=True)

  start = time.perf_counter()
  model, original = original_network(config, old_task, workdir)
  original_time = time.perf_counter() - start
  evaluate = functools.partial(
    inference.evaluate, batch_size=config.inference_batch_size
  )
  results = {
    "experiment": "single_task",
    "old_task": old_task.name,
    "new_task": new_task.name,
    "original": {
      "old_accuracy": evaluate(model, original, old_task),
      "wall_time_s": original_time,
    },
    "methods": {},
  }
  for name in config.methods:
    start = time.perf_counter()
    grown, variables = methods.add_task(
      model,
      original,
      new_task,
      method=methods.get_method(name),
      recipe=recipe,
      rng=jax.random.fold_in(jax.random.key(config.seed), 1),
      old_tasks=[old_task],
    )
    results["methods"][name] = {
      "old_accuracy": evaluate(grown, variables, old_task),
      "new_accuracy": evaluate(grown, variables, new_task),
      "wall_time_s": time.perf_counter() - start,
    }

  table = report.single_task_table(results)
  report.write_json(
    os.path.join(workdir, "results.json"), {**results, "config": config.to_dict()}
  )
  report.write_text(os.path.join(workdir, "results.md"), table + "\n")
  print(table)
  return results
