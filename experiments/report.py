"""Result files and tables of experiments.

Files are written atomically (a temporary file, then a rename), so an interrupted
run never leaves a half-written result.
"""

import json
import os
import tempfile
from typing import Any

METHOD_NAMES = {
  "lwf": "LwF (ours)",
  "fine_tuning": "Fine-tuning",
  "feature_extraction": "Feature extraction",
  "joint": "Joint training",
}


def write_text(path: str, text: str) -> None:
  """Replaces the file at ``path`` with ``text`` in one step."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=directory, delete=False) as tmp:
    tmp.write(text)
  os.replace(tmp.name, path)


def write_json(path: str, data: Any) -> None:
  write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def single_task_table(results: dict) -> str:
  """The paper's Table 1 layout as Markdown.

  LwF's accuracies are absolute and every other method's are differences from
  LwF's, as in the paper; without an LwF row all are absolute.

  Args:
    results: ``{'old_task', 'new_task', 'original': {'old_accuracy'}, 'methods':
      {name: {'old_accuracy', 'new_accuracy', 'wall_time_s'}}}``, accuracies as
      fractions.

  Returns:
    Markdown text.
  """
  old, new = results["old_task"], results["new_task"]
  methods = results["methods"]
  reference = methods.get("lwf")
  lines = [
    f"| method | old task: {old} | new task: {new} | wall time (s) |",
    "|---|---:|---:|---:|",
  ]
  for name, row in methods.items():
    cells = []
    for key in ("old_accuracy", "new_accuracy"):
      value = 100 * row[key]
      if reference is not None and name != "lwf":
        cells.append(f"{value - 100 * reference[key]:+.2f}")
      else:
        cells.append(f"{value:.2f}")
    label = METHOD_NAMES.get(name, name)
    lines.append(f"| {label} | {cells[0]} | {cells[1]} | {row['wall_time_s']:.1f} |")
  note = (
    "Test accuracy (%). LwF absolute, other methods as the difference from LwF "
    "(the paper's Table 1 layout)."
    if reference is not None
    else "Test accuracy (%)."
  )
  original = 100 * results["original"]["old_accuracy"]
  return "\n".join(
    [*lines, "", note, f"The original network's accuracy on {old}: {original:.2f}."]
  )
