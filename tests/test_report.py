"""Result tables and files."""

import json
import os

from experiments import report

RESULTS = {
  "old_task": "mnist5k",
  "new_task": "uci_digits",
  "original": {"old_accuracy": 0.98},
  "methods": {
    "lwf": {"old_accuracy": 0.965, "new_accuracy": 0.9812, "wall_time_s": 20.04},
    "fine_tuning": {"old_accuracy": 0.94, "new_accuracy": 0.9812, "wall_time_s": 15.0},
    "joint": {"old_accuracy": 0.975, "new_accuracy": 0.99, "wall_time_s": 31.26},
  },
}


def test_single_task_table_is_the_papers_layout():
  lines = report.single_task_table(RESULTS).splitlines()
  assert (
    lines[0] == "| method | old task: mnist5k | new task: uci_digits | wall time (s) |"
  )
  assert lines[2] == "| LwF (ours) | 96.50 | 98.12 | 20.0 |"
  assert lines[3] == "| Fine-tuning | -2.50 | +0.00 | 15.0 |"
  assert lines[4] == "| Joint training | +1.00 | +0.88 | 31.3 |"
  assert "difference from LwF" in lines[6]
  assert lines[7] == "The original network's accuracy on mnist5k: 98.00."


def test_without_lwf_all_rows_absolute():
  results = {**RESULTS, "methods": {"joint": RESULTS["methods"]["joint"]}}
  lines = report.single_task_table(results).splitlines()
  assert lines[2] == "| Joint training | 97.50 | 99.00 | 31.3 |"
  assert "difference" not in lines[4]


def test_write_json_replaces_atomically(tmp_path):
  path = os.path.join(tmp_path, "sub", "results.json")
  report.write_json(path, {"a": 1})
  report.write_json(path, {"a": 2})
  assert json.load(open(path)) == {"a": 2}
  assert os.listdir(os.path.dirname(path)) == ["results.json"]
