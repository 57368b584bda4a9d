"""Training logs of an experiment: a CSV of every logged value, TensorBoard events.

While a run goes, it appends to ``<workdir>/logs.partial/`` (an unfinished run's,
which it resumes, or a copy of the last complete run's); when it completes, that
directory replaces ``<workdir>/logs/``:

- ``metrics.csv``, one row per value: ``run, seed, task, stage, step, metric,
  value``. Stages ``from scratch``, ``warm-up`` and ``train`` log the training
  metrics of :func:`lwf_jax.train.train_step` (``loss``, ``ce/<task>``,
  ``kl/<old head>``, ...) and ``learning_rate`` every ``config.log_every_steps``
  steps; stage ``evaluate`` logs ``task_il/<task>`` and ``class_il/<task>`` after
  each task (step: the task's index).
- ``tensorboard/<run>_seed<seed>/``, the same values as TensorBoard scalars, tagged
  ``<task>/<stage>/<metric>``: ``tensorboard --logdir <workdir>``.

TensorBoard event files are written with tensorboardX, which needs no TensorFlow.
"""

import csv
import io
import os
import shutil
from typing import Any

import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from experiments import report
from lwf_jax import methods

COLUMNS = ("run", "seed", "task", "stage", "step", "metric", "value")


class MetricsLog:
  """Appends an experiment's logged values to its CSV and TensorBoard files."""

  def __init__(self, workdir: str):
    self.partial = os.path.join(workdir, "logs.partial")
    self.final = os.path.join(workdir, "logs")
    # Go on from an unfinished run's logs, else from the last complete run's.
    if not os.path.exists(self.partial):
      if os.path.exists(self.final):
        shutil.copytree(self.final, self.partial)
      else:
        os.makedirs(self.partial)
    self.csv_path = os.path.join(self.partial, "metrics.csv")
    rows = _read_rows(self.csv_path)
    # Rewritten whole: a run killed while appending may have left half a row.
    report.write_text(self.csv_path, _csv_text([COLUMNS, *rows]))
    self._file = open(self.csv_path, "a", newline="", encoding="utf-8")
    self._csv = csv.writer(self._file)
    self._rows = len(rows)
    self._restarted: dict[tuple[str, str], int] = {}
    self._writers: dict[str, SummaryWriter] = {}

  def restart(self, run: str, seeds: tuple[int, ...]) -> None:
    """Forgets the rows logged so far for ``run`` on ``seeds``: it starts afresh
    (it has no checkpoint), so they are of an earlier computation."""
    for seed in seeds:
      self._restarted[run, str(seed)] = self._rows

  def for_run(self, run: str, seeds: tuple[int, ...], vmapped: bool) -> methods.Log:
    """The :data:`lwf_jax.methods.Log` of one run (a method, or the first task)
    of ``seeds``: one seed, or several vmapped (each value then ``[seeds]``)."""

    def log(task: str, stage: str, step: int, metrics: dict[str, Any]) -> None:
      for s, seed in enumerate(seeds):
        values = {
          # Vmapped, [seeds] arrays; scalars (the learning rate) hold for all.
          name: float(np.broadcast_to(value, len(seeds))[s] if vmapped else value)
          for name, value in metrics.items()
        }
        self.write(run, seed, task=task, stage=stage, step=step, values=values)
        if stage == "evaluate":
          tqdm.tqdm.write(summary_line(run, seed, task, values))

    return log

  def write(
    self, run: str, seed: int, *, task: str, stage: str, step: int, values: dict
  ) -> None:
    """One row per value, and one TensorBoard scalar each."""
    name = f"{report.slug(run)}_seed{seed}"
    if name not in self._writers:
      self._writers[name] = SummaryWriter(
        os.path.join(self.partial, "tensorboard", name)
      )
    writer = self._writers[name]
    for metric, value in values.items():
      self._csv.writerow((run, seed, task, stage, step, metric, repr(value)))
      writer.add_scalar(f"{task}/{stage}/{metric}", value, step)
    self._rows += len(values)
    self._file.flush()

  def close(self, *, complete: bool) -> None:
    """Closes the files; if ``complete``, the logs replace ``logs/``, each value
    once (a resumed run logs again the steps after its checkpoint)."""
    for writer in self._writers.values():
      writer.close()
    self._file.close()
    if complete:
      _keep_last_of_each(self.csv_path, self._restarted)
      if os.path.exists(self.final):
        shutil.rmtree(self.final)
      os.replace(self.partial, self.final)


def _read_rows(path: str) -> list[list[str]]:
  """The complete data rows of the CSV at ``path`` (none if it is missing)."""
  if not os.path.exists(path):
    return []
  with open(path, newline="", encoding="utf-8") as file:
    rows = list(csv.reader(file))
  return [row for row in rows if len(row) == len(COLUMNS) and row != list(COLUMNS)]


def _keep_last_of_each(path: str, restarted: dict[tuple[str, str], int]) -> None:
  """Rewrites the CSV at ``path`` with one row per value, the last logged, and
  none of a restarted run's from before its restart (``{(run, seed): row}``)."""
  rows = [
    row
    for i, row in enumerate(_read_rows(path))
    if i >= restarted.get((row[0], row[1]), 0)
  ]
  last = {tuple(row[:-1]): row for row in rows}  # insertion order: first logged
  report.write_text(path, _csv_text([COLUMNS, *last.values()]))


def _csv_text(rows: list) -> str:
  buffer = io.StringIO()
  csv.writer(buffer).writerows(rows)
  return buffer.getvalue()


def summary_line(run: str, seed: int, task: str, scores: dict[str, float]) -> str:
  """One line after a task: the average accuracy over the tasks seen so far."""
  averages = []
  for scenario, name in (("task_il", "Task-IL"), ("class_il", "Class-IL")):
    values = [v for k, v in scores.items() if k.startswith(scenario + "/")]
    if values and not np.isnan(values).all():
      averages.append(f"{name} {100 * np.nanmean(values):.2f}%")
  seen = sum(k.startswith("task_il/") for k in scores)
  return f"{run}, seed {seed}, after {task} ({seen} seen): " + ", ".join(averages)
