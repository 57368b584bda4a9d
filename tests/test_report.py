"""Result tables, files and plots, from hand-made results."""

import json
import os

import numpy as np
import pytest

from experiments import report

NAN = float("nan")


def entry(matrices, wall_times):
  """A method's results over seeds, summarised as the experiment does."""
  from experiments import continual

  matrices = [np.array(m, float) for m in matrices]
  return {
    "seeds": {},
    "task_il": continual.summarize(matrices, None),
    "class_il": continual.summarize(matrices, None),
    "wall_time_s": report.mean_std(wall_times),
  }


RESULTS = {
  "experiment": "toy",
  "tasks": ["mnist5k", "uci_digits"],
  "seeds": [0, 1],
  "reference": None,
  "wall_time_s": 90.0,
  "config": {"model": "cnn", "optimizer": "sgd", "published": {}},
  "methods": {
    "lwf": entry(
      [[[0.98, NAN], [0.96, 0.98]], [[0.98, NAN], [0.97, 0.99]]], [20.0, 22.0]
    ),
    "fine_tuning": entry(
      [[[0.98, NAN], [0.94, 0.98]], [[0.98, NAN], [0.94, 0.99]]], [15.0, 15.0]
    ),
  },
}


def test_single_task_table_is_the_papers_layout():
  lines = report.single_task_table(RESULTS).splitlines()
  assert (
    lines[0] == "| method | old task: mnist5k | new task: uci_digits | wall time (s) |"
  )
  assert lines[2] == "| LwF (ours) | 96.50 ± 0.50 | 98.50 ± 0.50 | 21.0 |"
  # Differences from LwF's means; the spread is fine-tuning's own.
  assert lines[3] == "| Fine-tuning | -2.50 ± 0.00 | +0.00 ± 0.50 | 15.0 |"
  assert "difference from LwF" in lines[5]


def test_sequence_table_metrics_and_published_column():
  published = {"task_il": {"lwf": 99.6}}
  lines = report.sequence_table(RESULTS, "task_il", published).splitlines()
  assert lines[0].endswith("| wall time (s) | published average accuracy |")
  # Average accuracy (0.96 + 0.98) / 2 and (0.97 + 0.99) / 2; forgetting 2 and 1.
  assert (
    lines[2]
    == "| LwF (ours) | 97.50 ± 0.50 | 1.50 ± 0.50 | -1.50 ± 0.50 | 21.0 | 99.60 |"
  )
  assert (
    lines[3] == "| Fine-tuning | 96.25 ± 0.25 | 4.00 ± 0.00 | -4.00 ± 0.00 | 15.0 |  |"
  )


def test_published_numbers_shown_only_for_their_setting():
  published = {
    "source": "Someone (2019)",
    "setting": {"model": "cnn", "optimizer": "sgd"},
    "task_il": {"lwf": 99.6},
  }
  config = {**RESULTS["config"], "published": published}
  text = report.markdown({**RESULTS, "config": config})
  assert "99.60" in text and "Published: Someone (2019)" in text
  for field, value in [("model", "cnn_tiny"), ("optimizer", "adam")]:
    changed = {**config, field: value}
    text = report.markdown({**RESULTS, "config": changed})
    assert "99.60" not in text and "Someone" not in text, field


def test_one_seed_shows_no_spread():
  results = {**RESULTS, "seeds": [0]}
  assert "±" not in report.single_task_table(results)


def test_markdown_has_every_section():
  text = report.markdown(RESULTS)
  for part in ("## toy", "1.5 min in all", "Task-IL (the task is known)", "Class-IL"):
    assert part in text


def test_method_labels():
  assert report.label("lwf") == "LwF (ours)"
  assert report.label("lwf (λo=0.3)") == "LwF (ours) (λo=0.3)"
  assert report.label("custom") == "custom"


def test_write_json_is_strict_and_atomic(tmp_path):
  path = os.path.join(tmp_path, "sub", "results.json")
  report.write_json(path, {"a": 1})
  report.write_json(path, {"a": [NAN, 2.0], "b": (1, 2)})
  with open(path) as file:
    assert json.load(file) == {"a": [None, 2.0], "b": [1, 2]}
  assert os.listdir(os.path.dirname(path)) == ["results.json"]
  assert os.stat(path).st_mode & 0o644 == 0o644  # readable, unlike a temp file


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = os.path.join(tmp_path, "results.json")
  report.write_json(path, {"a": 1})
  with pytest.raises(TypeError):
    report.write_text(path, None)  # fails half-way, inside the temporary file
  assert os.listdir(tmp_path) == ["results.json"]
  with open(path) as file:
    assert json.load(file) == {"a": 1}


@pytest.mark.parametrize("num_tasks", [2, 5])
def test_plots_are_png_files(tmp_path, num_tasks):
  matrix = np.tril(np.full((num_tasks, num_tasks), 0.9))
  matrix[np.triu_indices(num_tasks, 1)] = NAN
  results = {
    **RESULTS,
    "tasks": [f"t{i}" for i in range(num_tasks)],
    "methods": {"lwf": entry([matrix, matrix], [1.0, 1.0])},
  }
  for plot in (report.plot_curves, report.plot_matrices):
    path = os.path.join(tmp_path, f"{plot.__name__}_{num_tasks}.png")
    plot(results, "task_il", path)
    with open(path, "rb") as file:
      assert file.read(8) == b"\x89PNG\r\n\x1a\n"


def test_unwritable_workdir_is_refused(tmp_path):
  blocker = os.path.join(tmp_path, "file")
  with open(blocker, "w") as file:
    file.write("x")
  with pytest.raises(ValueError, match="cannot write to the work directory"):
    report.check_writable(os.path.join(blocker, "sub"))


def test_compile_timer_counts_compiling_only_inside_the_block():
  import jax

  add_one = jax.jit(lambda x: x + 1)
  with report.CompileTimer() as first:
    add_one(np.float32(0)).block_until_ready()
  with report.CompileTimer() as again:  # compiled already: nothing to count
    add_one(np.float32(1)).block_until_ready()
  jax.jit(lambda x: x * 2)(np.float32(0))  # outside any block
  assert first.seconds > 0
  assert again.seconds == 0
