"""Result files, tables and plots of experiments.

Files are written atomically (a temporary file, then a rename), so an interrupted
run never leaves a half-written result. Accuracies are stored as fractions and
shown as percentages.
"""

import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

SCENARIO_NAMES = {"task_il": "Task-IL", "class_il": "Class-IL"}
METHOD_NAMES = {
  "lwf": "LwF (ours)",
  "lwf_no_warmup": "LwF, no warm-up",
  "lwf_online": "LwF, online teacher",
  "lwf_t2": "LwF, T² scaling",
  "fine_tuning": "Fine-tuning",
  "fine_tuning_fc": "Fine-tune FC",
  "feature_extraction": "Feature extraction",
  "joint": "Joint training",
  "lfl": "LFL",
  "l2_soft": "L2 soft constraint",
}


class Timer:
  """``with Timer() as t: ...`` then ``t.seconds``."""

  def __enter__(self):
    self.start = time.perf_counter()
    self.seconds = 0.0
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self.start


class CompileTimer:
  """``with CompileTimer() as t: ...`` then ``t.seconds``: the time JAX spent
  tracing, lowering and compiling programs inside the block (its own compile
  events; a function traced inside another's trace counts in both, so this is an
  upper bound)."""

  EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
  )

  def __enter__(self):
    self.seconds = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._record)
    return self

  def _record(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event in self.EVENTS:
      self.seconds += duration

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._record)


def mean_std(values: Sequence[float]) -> dict[str, float]:
  """``{'mean', 'std'}`` of ``values`` (population standard deviation)."""
  values = np.asarray(values, float)
  return {"mean": float(values.mean()), "std": float(values.std())}


def check_writable(directory: str) -> None:
  """Creates ``directory`` if needed; ``ValueError`` unless files can be written."""
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory):
      pass
  except OSError as error:
    raise ValueError(
      f"cannot write to the work directory {directory!r}: {error}"
    ) from error


def _replace(path: str, write: Callable, mode: str = "w") -> None:
  """Writes a temporary file beside ``path`` with ``write(file)``, then renames it.

  The file gets the permissions of a newly created one (``0666 & ~umask``), not
  the temporary file's 0600; on failure the temporary file is removed.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = tempfile.NamedTemporaryFile(mode, dir=directory, delete=False)
  try:
    with tmp:
      write(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp.name, 0o666 & ~umask)
    os.replace(tmp.name, path)
  except BaseException:
    os.unlink(tmp.name)
    raise


def write_text(path: str, text: str) -> None:
  """Replaces the file at ``path`` with ``text`` in one step."""
  _replace(path, lambda file: file.write(text))


def _jsonable(value: Any) -> Any:
  """NaN (a task not yet seen) as null, tuples as lists: strict JSON."""
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_jsonable(v) for v in value]
  return value


def write_json(path: str, data: Any) -> None:
  write_text(path, json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")


def scenarios(results: dict) -> list[str]:
  """The scenarios reported: class-incremental only where every task is
  single-label (a multi-label task has no one class to pick)."""
  return results.get("scenarios", list(SCENARIO_NAMES))


def slug(name: str) -> str:
  """A file name for a run's label, such as ``lwf_lambda_o_0.5``."""
  name = name.replace("λo", "lambda_o")
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def label(name: str) -> str:
  """A method's display name; sweep labels keep their suffix."""
  base, _, suffix = name.partition(" ")
  return f"{METHOD_NAMES.get(base, base)} {suffix}".strip()


def _percent(
  stat: dict, *, spread: bool, signed: bool = False, reference: float = 0.0
) -> str:
  """``mean`` as a percentage, minus ``reference``; with ``± std`` if ``spread``."""
  value = 100 * (stat["mean"] - reference)
  text = f"{value:+.2f}" if signed else f"{value:.2f}"
  return f"{text} ± {100 * stat['std']:.2f}" if spread else text


def single_task_table(results: dict) -> str:
  """Two tasks: the paper's Table 1 layout (task-incremental accuracy), Markdown.

  LwF's accuracies are absolute and every other method's are differences from
  LwF's, as in the paper; without an LwF row all are absolute.
  """
  old, new = results["tasks"]
  methods = results["methods"]
  cells = {}
  for name, entry in methods.items():
    matrix = entry["task_il"]["matrix"]
    cells[name] = [
      {"mean": matrix["mean"][1][j], "std": matrix["std"][1][j]} for j in (0, 1)
    ]
  reference = cells.get("lwf")
  spread = len(results["seeds"]) > 1
  lines = [
    f"| method | old task: {old} | new task: {new} | wall time (s) |",
    "|---|---:|---:|---:|",
  ]
  for name, (old_acc, new_acc) in cells.items():
    if reference is not None and name != "lwf":
      shown = [
        _percent(stat, spread=spread, signed=True, reference=ref["mean"])
        for stat, ref in zip((old_acc, new_acc), reference, strict=True)
      ]
    else:
      shown = [_percent(old_acc, spread=spread), _percent(new_acc, spread=spread)]
    seconds = methods[name]["wall_time_s"]["mean"]
    lines.append(f"| {label(name)} | {shown[0]} | {shown[1]} | {seconds:.1f} |")
  note = "Test accuracy (%), task known (each task's own head)"
  if reference is not None:
    note += "; LwF absolute, other methods as the difference from LwF (the paper's "
    note += "Table 1 layout)"
  return "\n".join([*lines, "", note + "."])


def sequence_table(results: dict, scenario: str, published: dict | None = None) -> str:
  """Continual-learning metrics of every method in one scenario, Markdown."""
  published = (published or {}).get(scenario) or {}
  # Forward transfer compares with networks trained on one task, whose accuracy is
  # task-incremental: it is defined in that scenario only.
  with_fwt = results.get("reference") is not None and scenario == "task_il"
  spread = len(results["seeds"]) > 1
  header = ["method", "average accuracy", "forgetting", "backward transfer"]
  header += ["forward transfer"] * with_fwt + ["wall time (s)"]
  header += ["published average accuracy"] * bool(published)
  lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
  for name, entry in results["methods"].items():
    stats = entry[scenario]
    row = [
      label(name),
      _percent(stats["final_average_accuracy"], spread=spread),
      _percent(stats["forgetting"], spread=spread),
      _percent(stats["backward_transfer"], spread=spread, signed=True),
    ]
    if with_fwt:
      row.append(_percent(stats["forward_transfer"], spread=spread, signed=True))
    row.append(f"{entry['wall_time_s']['mean']:.1f}")
    if published:
      value = published.get(name)
      row.append("" if value is None else f"{value:.2f}")
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def applicable_published(config: dict) -> dict:
  """The config's published numbers if its settings match theirs, else ``{}``.

  ``published.setting`` names the config fields (model, optimizer, ...) of the
  published experiment; a config that changes any of them (a quick variant with a
  smaller network, say) is not comparable, and its report shows none.
  """
  published = config.get("published") or {}
  setting = published.get("setting") or {}
  if any(config.get(key) != value for key, value in setting.items()):
    return {}
  return published


def markdown(results: dict) -> str:
  """The whole report of one experiment."""
  config = results["config"]
  seeds = results["seeds"]
  parts = [
    f"## {results['experiment']}",
    "",
    f"Tasks, in order: {', '.join(results['tasks'])}. Model `{config['model']}`, "
    f"optimizer {config['optimizer']}, seeds {', '.join(map(str, seeds))}"
    + (" (mean ± standard deviation)" if len(seeds) > 1 else "")
    + (", trained as one vmapped program" if results.get("vmapped_seeds") else "")
    + f"; {results['wall_time_s'] / 60:.1f} min in all"
    + (
      f", {results['compile_time_s']:.0f} s of it compiling."
      if "compile_time_s" in results
      else "."
    ),
    "",
  ]
  if len(results["tasks"]) == 2:
    parts += [single_task_table(results), ""]
  published = applicable_published(config)
  for scenario in scenarios(results):
    scenario_name = SCENARIO_NAMES[scenario]
    parts += [
      f"{scenario_name} (the task is {'known' if scenario == 'task_il' else 'unknown'})"
      ", after the last task, in %:",
      "",
      sequence_table(results, scenario, published),
      "",
    ]
  if published:
    parts += [f"Published: {published['source']}", ""]
  if results.get("multi_label_tasks"):
    parts += [
      "Multi-label tasks ("
      + ", ".join(results["multi_label_tasks"])
      + ") are scored by mean average precision in place of accuracy.",
      "",
    ]
  parts += [
    "Average accuracy: over all tasks after the last; forgetting: Chaudhry et al. "
    "(2018); backward transfer: Lopez-Paz & Ranzato (2017)"
    + (
      "; forward transfer: against a network trained on each task alone."
      if results.get("reference") is not None
      else "."
    ),
    "",
  ]
  return "\n".join(parts)


def plot_curves(results: dict, scenario: str, path: str) -> None:
  """Accuracy on each task as tasks are added (the paper's Fig. 4), one panel each,
  and the average over the tasks seen so far; shaded: ± one standard deviation."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  task_names = results["tasks"]
  num_tasks = len(task_names)
  panels = num_tasks + 1
  cols = min(panels, 4)
  rows = -(-panels // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
  steps = np.arange(1, num_tasks + 1)
  for name, entry in results["methods"].items():
    stats = entry[scenario]
    mean, std = np.array(stats["matrix"]["mean"]), np.array(stats["matrix"]["std"])
    for j in range(num_tasks):
      ax = axes.flat[j]
      ax.plot(steps[j:], 100 * mean[j:, j], marker="o", ms=3, label=label(name))
      low, high = 100 * (mean[j:, j] - std[j:, j]), 100 * (mean[j:, j] + std[j:, j])
      ax.fill_between(steps[j:], low, high, alpha=0.2)
    curve = stats["average_accuracy"]
    ax = axes.flat[num_tasks]
    ax.plot(steps, 100 * np.array(curve["mean"]), marker="o", ms=3, label=label(name))
  for j, task in enumerate(task_names):
    axes.flat[j].set_title(f"task {j + 1}: {task}", fontsize=9)
  axes.flat[num_tasks].set_title("average over tasks seen", fontsize=9)
  for ax in axes.flat[:panels]:
    ax.set_xticks(steps)
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
  for ax in axes.flat[panels:]:
    ax.axis("off")
  handles, labels = axes.flat[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
  fig.suptitle(f"{results['experiment']}: {SCENARIO_NAMES[scenario]}", fontsize=10)
  fig.tight_layout(rect=(0, 0.04 + 0.03 * (len(labels) > 4), 1, 0.97))
  _save(fig, path)


def plot_matrices(results: dict, scenario: str, path: str) -> None:
  """The accuracy matrix of each method as a heat map (mean over seeds)."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  names = list(results["methods"])
  num_tasks = len(results["tasks"])
  cols = min(len(names), 4)
  rows = -(-len(names) // cols)
  size = 1.0 + 0.45 * num_tasks
  fig, axes = plt.subplots(
    rows, cols, figsize=(size * cols, size * rows), squeeze=False
  )
  for ax, name in zip(axes.flat, names, strict=False):
    matrix = 100 * np.array(results["methods"][name][scenario]["matrix"]["mean"], float)
    ax.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=100, cmap="viridis")
    for i in range(num_tasks):
      for j in range(i + 1):
        color = "white" if matrix[i, j] < 60 else "black"
        text = f"{matrix[i, j]:.1f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=6, color=color)
    ax.set_title(label(name), fontsize=9)
    ax.set_xticks(range(num_tasks), [str(j + 1) for j in range(num_tasks)])
    ax.set_yticks(range(num_tasks), [str(i + 1) for i in range(num_tasks)])
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after task")
  for ax in axes.flat[len(names) :]:
    ax.axis("off")
  fig.suptitle(
    f"{results['experiment']}: {SCENARIO_NAMES[scenario]} accuracy (%)", fontsize=10
  )
  fig.tight_layout()
  _save(fig, path)


def _save(fig, path: str) -> None:
  from matplotlib import pyplot as plt

  try:
    _replace(path, lambda file: fig.savefig(file, format="png", dpi=110), mode="wb")
  finally:
    plt.close(fig)


def write_all(results: dict, workdir: str) -> str:
  """Writes ``results.json``, ``results.md`` and the plots; returns the Markdown."""
  text = markdown(results)
  write_json(os.path.join(workdir, "results.json"), results)
  write_text(os.path.join(workdir, "results.md"), text)
  for scenario in scenarios(results):
    plot_curves(results, scenario, os.path.join(workdir, f"curves_{scenario}.png"))
    plot_matrices(results, scenario, os.path.join(workdir, f"matrix_{scenario}.png"))
  return text


def _nan_for_null(value: Any) -> Any:
  """The inverse of :func:`_jsonable` on lists: null (a task not yet seen) as NaN."""
  if isinstance(value, dict):
    return {k: _nan_for_null(v) for k, v in value.items()}
  if isinstance(value, list):
    return [math.nan if v is None else _nan_for_null(v) for v in value]
  return value


def read_json(path: str) -> Any:
  """The data of a file :func:`write_json` wrote, NaN where it wrote null in a list."""
  with open(path) as file:
    return _nan_for_null(json.load(file))
