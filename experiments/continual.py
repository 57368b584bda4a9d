"""The experiment protocol: tasks added one after another, for methods and seeds.

For each seed:

1. train a network from scratch on the first task, once; it is kept in
   ``<workdir>/first_task_seed<seed>`` so every method, and every later run with
   the same settings, starts from the same network;
2. with each method, add the other tasks one at a time, evaluating every task seen
   so far after each (the accuracy matrices, in the task- and class-incremental
   scenarios);
3. optionally train a network on each task alone, the reference for forward
   transfer.

With two tasks this is the paper's single-new-task protocol (Table 1); with more,
its multiple-new-task protocol (Fig. 4). Results, metrics (mean and standard
deviation over seeds), a Markdown report and plots go to the work directory.
"""

import dataclasses
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import logs, report
from lwf_jax import (
  augment,
  checkpoints,
  datasets,
  export,
  methods,
  metrics,
  models,
  optim,
  parallel,
  resume,
  sequence,
  tasks,
  trunks,
)
from lwf_jax import seeds as seeds_lib
from lwf_jax import train as train_lib

TASK_KEYS = (
  "dataset",
  "name",
  "classes",
  "max_train_per_class",
  "permutation_seed",
  "image_size",
  "channels",
  "data_dir",
)
SCENARIOS = ("task_il", "class_il")


def load_task(spec: dict) -> tasks.Task:
  """The task a config's ``tasks`` entry describes (keys: :data:`TASK_KEYS`)."""
  unknown = sorted(set(spec) - set(TASK_KEYS))
  if unknown or "dataset" not in spec:
    raise ValueError(
      f"a task needs 'dataset' and may have {', '.join(TASK_KEYS[1:])}; got {spec}"
    )
  return datasets.load_task(
    spec["dataset"],
    name=spec.get("name") or None,
    classes=tuple(spec.get("classes") or ()) or None,
    max_train_per_class=spec.get("max_train_per_class", 0),
    permutation_seed=spec.get("permutation_seed"),
    image_size=spec.get("image_size"),
    channels=spec.get("channels"),
    data_dir=spec.get("data_dir") or None,
    # On several processes, each reads and keeps its own shard (lwf_jax.parallel).
    shard=(jax.process_index(), jax.process_count()),
  )


def task_settings(spec: dict, task: tasks.Task) -> dict:
  """A task's spec with every default filled in, so equal tasks compare equal."""
  return {
    "dataset": spec["dataset"],
    "name": task.name,
    "classes": list(task.classes),
    "max_train_per_class": spec.get("max_train_per_class", 0),
    "permutation_seed": spec.get("permutation_seed"),
    "image_size": spec.get("image_size"),
    "channels": spec.get("channels"),
  }


def make_recipe(config: ml_collections.ConfigDict) -> methods.Recipe:
  """The training settings of a config."""
  return methods.Recipe(
    warmup=methods.Schedule(**config.warmup),
    main=methods.Schedule(**config.train),
    batch_size=config.batch_size,
    optimizer=config.optimizer,
    momentum=config.momentum,
    weight_decay=config.weight_decay,
    objective=train_lib.Objective(**config.lwf),
    lambda_features=config.lfl.lambda_features,
    lambda_weights=config.l2_soft.lambda_weights,
    inference_batch_size=config.inference_batch_size,
    num_devices=parallel.resolve_num_devices(config.num_devices),
    augmentation=augment.Augmentation(**config.augment),
    subtract_mean=config.subtract_mean,
    log_every_steps=config.log_every_steps,
  )


def make_trunk(config: ml_collections.ConfigDict):
  """The config's trunk, computing in its ``compute_dtype``."""
  return trunks.make_trunk(config.model, config.compute_dtype)


def method_runs(config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """``{label: (method, recipe)}``: each method, and each lambda_old of a sweep."""
  recipe = make_recipe(config)
  runs = {}
  for name in config.methods:
    method = methods.get_method(name)
    if not config.lambda_old_sweep or method.teacher is None:
      runs[name] = (method, recipe)
      continue
    for value in config.lambda_old_sweep:
      objective = dataclasses.replace(recipe.objective, lambda_old=float(value))
      label = f"{name} (λo={value:g})"
      if label in runs:
        raise ValueError(
          f"config.lambda_old_sweep repeats a value: {list(config.lambda_old_sweep)}"
        )
      runs[label] = (
        method,
        dataclasses.replace(recipe, objective=objective),
      )
  return runs


def first_task_settings(
  config: ml_collections.ConfigDict, task: tasks.Task, seed: int
) -> dict:
  """The settings that determine the first network, stored beside it as JSON."""
  settings = {
    "seed": seed,
    "model": config.model,
    "first_task": task_settings(config.tasks[0], task),
    "schedule": config.first_task.to_dict(),
    "batch_size": config.batch_size,
    "optimizer": config.optimizer,
    "momentum": config.momentum,
    "weight_decay": config.weight_decay,
    "augment": config.augment.to_dict(),
    "subtract_mean": config.subtract_mean,
    "compute_dtype": config.compute_dtype,
    # Dropout keys and BatchNorm statistics depend on how batches are split.
    "devices": parallel.resolve_num_devices(config.num_devices) * jax.process_count(),
  }
  return json.loads(json.dumps(settings))  # as read back: tuples become lists


def first_network_directory(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f"first_task_seed{seed}")


def check_first_network(
  config: ml_collections.ConfigDict, task: tasks.Task, workdir: str, seed: int
) -> None:
  """Raises ``ValueError`` if ``workdir`` holds a first network of this seed that was
  trained with other settings than ``config``'s."""
  directory = first_network_directory(workdir, seed)
  if not os.path.exists(directory):
    return
  saved = checkpoints.load_metadata(directory)
  settings = first_task_settings(config, task, seed)
  if saved != settings:
    changed = sorted(k for k in settings if saved.get(k) != settings[k])
    raise ValueError(
      f"the network in {directory} was trained with other settings "
      f"({', '.join(changed)}); use another --workdir or delete that directory"
    )


def first_networks(
  config: ml_collections.ConfigDict,
  task: tasks.Task,
  workdir: str,
  group: tuple[int, ...],
  vmapped: bool,
  *,
  log: methods.Log | None = None,
) -> tuple[models.MultiHeadNet, models.Variables, dict[int, float]]:
  """Loads each seed's first-task network from ``workdir``, or trains and saves it.

  With ``vmapped``, the missing seeds train as one vmapped program and the
  variables come back stacked on a leading seed axis (see :mod:`lwf_jax.seeds`);
  without, ``group`` is one seed.

  Returns:
    ``(model, variables, {seed: seconds spent training it; 0 when loaded})``.
  """
  recipe = make_recipe(config)
  model = models.MultiHeadNet(
    trunk=make_trunk(config),
    head_specs=(
      models.HeadSpec(task.name, task.num_classes, multi_label=task.multi_label),
    ),
    image_shape=methods.input_shape(task.image_shape, recipe.augmentation),
    pixel_mean=methods.pixel_mean(task.train["image"]) if recipe.subtract_mean else (),
  )
  per_seed, seconds = {}, {}
  for seed in group:
    directory = first_network_directory(workdir, seed)
    if os.path.exists(directory):
      check_first_network(config, task, workdir, seed)
      per_seed[seed], _ = checkpoints.load(directory)
      seconds[seed] = 0.0
      print(f"Reusing the network trained on {task.name!r} in {directory}.")
  missing = [seed for seed in group if seed not in per_seed]
  if missing:
    with report.Timer() as timer:
      keys = seeds_lib.keys(missing) if vmapped else jax.random.key(missing[0])
      trained_model, trained = methods.learn_first_task(
        model.trunk,
        task,
        schedule=methods.Schedule(**config.first_task),
        recipe=recipe,
        rng=keys,
        log=log,
      )
    assert trained_model == model, "a loaded network must equal a trained one"
    for s, seed in enumerate(missing):
      per_seed[seed] = seeds_lib.take(trained, s) if vmapped else trained
      checkpoints.save(
        first_network_directory(workdir, seed),
        per_seed[seed],
        first_task_settings(config, task, seed),
      )
      seconds[seed] = timer.seconds / len(missing)
  if not vmapped:
    return model, per_seed[group[0]], seconds
  return model, seeds_lib.stack([per_seed[seed] for seed in group]), seconds


def reference_accuracies(
  config: ml_collections.ConfigDict,
  task_list: list[tasks.Task],
  group: tuple[int, ...],
  vmapped: bool,
  *,
  log: methods.Log | None = None,
) -> dict[int, list[float]]:
  """``{seed: test accuracy of a network trained from scratch on each task alone}``;
  with ``vmapped``, the group's seeds train as one vmapped program."""
  recipe = make_recipe(config)
  accuracies = {seed: [] for seed in group}
  for i, task in enumerate(task_list):
    keys = seeds_lib.fold_in(seeds_lib.keys(group), 1000 + i)
    model, variables = methods.learn_first_task(
      make_trunk(config),
      task,
      schedule=methods.Schedule(**config.first_task),
      recipe=recipe,
      rng=keys if vmapped else keys[0],
      log=log,
    )
    for s, seed in enumerate(group):
      task_il, _ = sequence.evaluate_row(
        model,
        seeds_lib.take(variables, s) if vmapped else variables,
        [task],
        batch_size=recipe.inference_batch_size,
        num_devices=recipe.num_devices,
      )
      accuracies[seed].append(task_il[0])
  return accuracies


def run_settings(
  config: ml_collections.ConfigDict,
  task_list: list[tasks.Task],
  label: str,
  group: tuple[int, ...],
  vmapped: bool,
) -> dict:
  """What determines a run's every step, stored in its checkpoints: the method,
  the settings it uses, the tasks, the network and the seeds."""
  method, recipe = method_runs(config)[label]
  used = dataclasses.asdict(recipe)
  del used["log_every_steps"]  # how often to log changes no step
  if method.teacher is None:
    del used["objective"]
  if not method.feature_penalty:
    del used["lambda_features"]
  if not method.weight_penalty:
    del used["lambda_weights"]
  first = first_task_settings(config, task_list[0], group[0])
  del first["seed"]
  return {
    "method": dataclasses.asdict(method),
    "recipe": used,
    "first_network": first,
    "tasks": [
      task_settings(spec, t) for spec, t in zip(config.tasks, task_list, strict=True)
    ],
    "seeds": list(group),
    "vmapped": vmapped,
  }


def run_checkpoints(
  config: ml_collections.ConfigDict,
  workdir: str,
  task_list: list[tasks.Task],
  label: str,
  group: tuple[int, ...],
) -> resume.RunCheckpoints:
  """The checkpoints of one run (``label``, seeds ``group``) in ``workdir``."""
  vmapped = vmaps_seeds(config, task_list)
  name = f"{report.slug(label)}_seed{'_'.join(map(str, group))}"
  return resume.RunCheckpoints(
    os.path.join(workdir, "checkpoints", name),
    run_settings(config, task_list, label, group, vmapped),
    every_steps=config.checkpoint_every_steps,
    info={"config": config.to_dict()},
  )


def seed_groups(config: ml_collections.ConfigDict, vmapped: bool) -> list[tuple]:
  """The seeds trained together: all of them vmapped, else one at a time."""
  return [tuple(config.seeds)] if vmapped else [(seed,) for seed in config.seeds]


def export_networks(
  config: ml_collections.ConfigDict,
  workdir: str,
  label: str,
  outcome: sequence.SequenceResult,
  *,
  group: tuple[int, ...],
  task_list: list[tasks.Task],
) -> None:
  """Exports each seed's final network to ``<workdir>/export/<run>_seed<seed>``,
  replacing an earlier export there only once the new one is complete."""
  vmapped = outcome.task_il.ndim == 3  # a seed axis
  for s, seed in enumerate(group):
    directory = os.path.join(workdir, "export", f"{report.slug(label)}_seed{seed}")
    staging = directory + ".new"
    if os.path.exists(staging):  # an interrupted replacement's
      shutil.rmtree(staging)
    export.save(
      staging,
      outcome.model,
      seeds_lib.take(outcome.variables, s) if vmapped else outcome.variables,
      trunk=config.model,
      compute_dtype=config.compute_dtype,
      classes={t.name: t.classes for t in task_list},
      image_dtype=str(task_list[0].train["image"].dtype),
    )
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.replace(staging, directory)


VMAP_SEEDS = ("auto", "on", "off")


def vmaps_seeds(config: ml_collections.ConfigDict, task_list: list[tasks.Task]) -> bool:
  """Whether the config's seeds train as one vmapped program (``config.vmap_seeds``).

  ``'auto'``: with several seeds on an accelerator, when every task's training
  data fit on the devices for epochs as scans. On a CPU, measured no faster than
  seeds in turn (the README's performance section), so off.
  """
  if config.vmap_seeds != "auto":
    return config.vmap_seeds == "on"
  data = {t.name: t.train for t in task_list}
  return (
    len(config.seeds) > 1
    and jax.default_backend() != "cpu"
    and train_lib.fits_on_devices(data, make_recipe(config).num_devices)
  )


def check_config(config: ml_collections.ConfigDict) -> list[tasks.Task]:
  """Checks every setting and loads the tasks, before any work; returns the tasks."""
  if not config.methods:
    raise ValueError("config.methods is empty")
  if len(set(config.methods)) != len(config.methods):
    raise ValueError(f"config.methods repeat a method: {list(config.methods)}")
  seeds = config.seeds
  if not isinstance(seeds, list | tuple) or not seeds:
    raise ValueError(f"config.seeds must be a non-empty tuple, got {seeds!r}")
  if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or not all(
    0 <= s < 2**31 for s in seeds
  ):
    raise ValueError(f"config.seeds must be integers in [0, 2**31), got {seeds!r}")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"config.seeds repeat a seed: {list(seeds)}")
  if len(config.tasks) < 2:
    raise ValueError("an experiment needs at least two tasks")
  make_trunk(config)
  method_runs(config)
  if config.vmap_seeds not in VMAP_SEEDS:
    raise ValueError(
      f"config.vmap_seeds must be one of {', '.join(VMAP_SEEDS)}, "
      f"got {config.vmap_seeds!r}"
    )
  methods.Schedule(**config.first_task)
  task_list = [load_task(spec) for spec in config.tasks]
  tasks.check_task_sequence(task_list)
  methods.input_shape(task_list[0].image_shape, make_recipe(config).augmentation)
  check_trainable_patterns(config, task_list[0])
  for task in task_list:  # this process's shard of each
    if config.batch_size > len(task.train["label"]) * jax.process_count():
      raise ValueError(
        f"batch size {config.batch_size} exceeds the {len(task.train['label'])} "
        f"training examples of task {task.name!r}"
      )
  return task_list


def check_run_checkpoints(
  config: ml_collections.ConfigDict, workdir: str, task_list: list[tasks.Task]
) -> None:
  """Raises ``ValueError`` if a run's checkpoint in ``workdir`` is damaged or of
  other settings (its metadata only: the arrays are read when resumed)."""
  vmapped = vmaps_seeds(config, task_list)
  for label in method_runs(config):
    for group in seed_groups(config, vmapped):
      checkpointer = run_checkpoints(config, workdir, task_list, label, group)
      try:
        checkpointer.latest()
      finally:
        checkpointer.close()


def check_trainable_patterns(config: ml_collections.ConfigDict, task: tasks.Task):
  """Raises ``ValueError`` if a method trains a part of the trunk that the config's
  model does not have (fine-tune FC needs ``fc`` layers), from the trunk's shapes
  alone, before anything is trained."""
  trunk = make_trunk(config)
  shape = methods.input_shape(task.image_shape, make_recipe(config).augmentation)
  params = jax.eval_shape(
    lambda: trunk.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
  )["params"]
  for name in config.methods:
    patterns = [p for p in methods.get_method(name).trainable if p.startswith("trunk/")]
    try:
      optim.trainable_labels({"trunk": params}, patterns)
    except ValueError as error:
      raise ValueError(
        f"method {name!r} with model {config.model!r}: {error}"
      ) from None


def summarize(matrices: list[np.ndarray], reference: list | None) -> dict:
  """Metrics of one method in one scenario, per seed and as mean and std.

  ``reference`` (per seed, per task) adds forward transfer.
  """
  per_seed = {
    "final_average_accuracy": [metrics.average_accuracy(m)[-1] for m in matrices],
    "forgetting": [metrics.forgetting(m) for m in matrices],
    "backward_transfer": [metrics.backward_transfer(m) for m in matrices],
  }
  if reference is not None:
    per_seed["forward_transfer"] = [
      metrics.forward_transfer(m, r) for m, r in zip(matrices, reference, strict=True)
    ]
  summary = {name: report.mean_std(values) for name, values in per_seed.items()}
  curves = np.array([metrics.average_accuracy(m) for m in matrices])
  summary["average_accuracy"] = {
    "mean": curves.mean(0).tolist(),
    "std": curves.std(0).tolist(),
  }
  stacked = np.array(matrices)
  summary["matrix"] = {"mean": stacked.mean(0).tolist(), "std": stacked.std(0).tolist()}
  return summary


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the experiment and returns the results written to ``results.json``."""
  task_list = check_config(config)
  report.check_writable(workdir)
  for seed in config.seeds:
    check_first_network(config, task_list[0], workdir, seed)
  check_run_checkpoints(config, workdir, task_list)
  # On several processes, the first writes the results and logs; all write
  # checkpoints (orbax coordinates them).
  primary = jax.process_index() == 0
  metrics_log = logs.MetricsLog(workdir) if primary else None
  complete = False
  try:
    with report.CompileTimer() as compiling:
      results = _run(config, workdir, task_list, compiling, metrics_log)
    complete = True
  finally:
    if metrics_log is not None:
      metrics_log.close(complete=complete)
  return results


def _run(
  config: ml_collections.ConfigDict,
  workdir: str,
  task_list: list[tasks.Task],
  compiling: report.CompileTimer,
  metrics_log: logs.MetricsLog | None,
) -> dict:
  runs = method_runs(config)
  primary = metrics_log is not None
  partial = os.path.join(workdir, "results.partial.json")
  if primary and os.path.exists(partial):  # an earlier, unfinished run's
    os.remove(partial)
  start = time.perf_counter()

  multi_label = [t.name for t in task_list if t.multi_label]
  scenarios = ["task_il"] if multi_label else list(SCENARIOS)
  results = {
    "experiment": config.name,
    "tasks": [t.name for t in task_list],
    "scenarios": scenarios,
    "multi_label_tasks": multi_label,
    "seeds": list(config.seeds),
    "first_task": {},
    "reference": {} if config.reference else None,
    "methods": {label: {"seeds": {}} for label in runs},
  }
  vmapped = vmaps_seeds(config, task_list)
  results["vmapped_seeds"] = vmapped
  for group in seed_groups(config, vmapped):

    def run_log(run: str, afresh: bool, group=group) -> methods.Log | None:
      """The log of ``run``; ``afresh``: its earlier rows are forgotten."""
      if metrics_log is None:
        return None
      if afresh:
        metrics_log.restart(run, group)
      return metrics_log.for_run(run, group, vmapped)

    trained = [
      s for s in group if not os.path.exists(first_network_directory(workdir, s))
    ]
    if metrics_log is not None:
      metrics_log.restart("first task", tuple(trained))
    model, variables, seconds = first_networks(
      config,
      task_list[0],
      workdir,
      group,
      vmapped,
      log=run_log("first task", afresh=False),
    )
    for seed in group:
      results["first_task"][str(seed)] = {"wall_time_s": seconds[seed]}
    rng = seeds_lib.fold_in(seeds_lib.keys(group), 1)
    for label, (method, recipe) in runs.items():
      checkpointer = run_checkpoints(config, workdir, task_list, label, group)
      afresh = checkpointer.latest() is None
      outcome = sequence.learn_sequence(
        model,
        variables,
        task_list,
        method=method,
        recipe=recipe,
        rng=rng if vmapped else rng[0],
        progress=f"{report.label(label)}, seed{'s' * vmapped} "
        + ", ".join(map(str, group)),
        log=run_log(label, afresh),
        checkpoints=checkpointer,
      )
      checkpointer.close()
      if primary:
        export_networks(
          config, workdir, label, outcome, group=group, task_list=task_list
        )
      for s, seed in enumerate(group):
        results["methods"][label]["seeds"][str(seed)] = {
          "task_il": (outcome.task_il[s] if vmapped else outcome.task_il).tolist(),
          "class_il": (outcome.class_il[s] if vmapped else outcome.class_il).tolist(),
          # Vmapped, each seed's share of the one run.
          "wall_time_s": outcome.wall_time_s / len(group),
        }
      # What is finished survives a failure later on; results.json, the last
      # complete run's, is replaced only when this run completes.
      if primary:
        report.write_json(partial, {**results, "config": config.to_dict()})
    if config.reference:
      accuracies = reference_accuracies(
        config, task_list, group, vmapped, log=run_log("reference", afresh=True)
      )
      results["reference"].update({str(seed): accuracies[seed] for seed in group})

  reference = (
    [results["reference"][str(s)] for s in config.seeds] if config.reference else None
  )
  for entry in results["methods"].values():
    per_seed = [entry["seeds"][str(s)] for s in config.seeds]
    for scenario in scenarios:
      matrices = [np.array(r[scenario], float) for r in per_seed]
      # The single-task references are task-incremental accuracies.
      entry[scenario] = summarize(
        matrices, reference if scenario == "task_il" else None
      )
    entry["wall_time_s"] = report.mean_std([r["wall_time_s"] for r in per_seed])

  results["wall_time_s"] = time.perf_counter() - start
  results["compile_time_s"] = compiling.seconds
  results["config"] = config.to_dict()
  text = report.markdown(results)
  if primary:
    report.write_all(results, workdir)
    os.remove(partial)
  return {**results, "markdown": text}
