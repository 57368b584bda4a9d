"""The ``lwf-jax`` command: its commands in-process, the console script end to end."""

import copy
import os
import pkgutil
import subprocess
import sys

import pytest
from absl import app

from experiments import cli, configs, report
from lwf_jax import methods
from tests.test_report import RESULTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(os.path.dirname(sys.executable), "lwf-jax")
SMOKE_CONFIG = "experiments/configs/mnist_to_uci_smoke.py"
PLOTS = [
  f"{kind}_{s}.png" for kind in ("curves", "matrix") for s in report.SCENARIO_NAMES
]


def lwf_jax(*args):
  return subprocess.run(
    [SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
  )


def row(line):
  """``(name, text)`` of a listed line."""
  name, _, text = line.strip().partition("  ")
  return name, text.strip()


def snapshot(directory):
  """``{name: (bytes, mtime)}`` of each file in ``directory``; None for a folder."""
  files = {}
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if os.path.isdir(path):
      files[name] = None
      continue
    with open(path, "rb") as file:
      files[name] = (file.read(), os.stat(path).st_mtime_ns)
  return files


def test_list_shows_every_experiment_data_set_method_and_model(capsys):
  cli.main(["lwf-jax", "list"])
  text = capsys.readouterr().out
  sections = text.split("\n\n")
  assert [s.splitlines()[0] for s in sections] == [
    "Experiments (experiments/configs/NAME.py):",
    "Data sets:",
    "Methods:",
    "Models:",
  ]
  rows = [dict(row(line) for line in s.splitlines()[1:]) for s in sections]
  experiments, data_sets, methods_, models = rows
  assert list(experiments) == [m.name for m in pkgutil.iter_modules(configs.__path__)]
  assert experiments["mnist_to_uci_smoke"] == (
    "A seconds-long variant of mnist_to_uci for tests: less data, fewer epochs."
  )
  assert data_sets["mnist5k"].startswith("offline")
  assert {name: m.description for name, m in methods.METHODS.items()} == methods_
  assert {"mlp": "", "cnn": "", "resnet32": ""}.items() <= models.items()


@pytest.mark.parametrize(
  "argv, message",
  [
    ([], "no command given; valid commands: run, list, report"),
    (["train"], "unknown command 'train'; valid commands: run, list, report"),
    (["list", "extra"], r"unexpected arguments: \['extra'\]"),
  ],
)
def test_bad_command_is_a_usage_error(argv, message):
  with pytest.raises(app.UsageError, match=message):
    cli.main(["lwf-jax", *argv])


def test_report_writes_the_same_tables_and_plots_again(tmp_path, capsys):
  workdir = str(tmp_path)
  written = report.write_all(RESULTS, workdir)
  before = snapshot(workdir)
  for name in ["results.md", *PLOTS]:
    os.remove(tmp_path / name)
  cli.report_command(workdir)
  assert capsys.readouterr().out == written + "\n"
  after = snapshot(workdir)
  assert list(after) == list(before)
  assert after["results.json"] == before["results.json"]  # not even rewritten
  assert after["results.md"][0] == before["results.md"][0] == written.encode()
  for name in PLOTS:
    assert after[name][0].startswith(b"\x89PNG"), name


@pytest.mark.parametrize(
  "content, message",
  [
    (None, "cannot read {}: No such file or directory"),
    ("{not json", "{} is not valid JSON: Expecting property name"),
    ("[1, 2]", "{} does not hold an experiment's results: TypeError"),
    ('{"experiment": "x"}', "{} does not hold an experiment's results: KeyError"),
    (b"\xff\xfe", "{} is not valid JSON"),
  ],
)
def test_bad_results_are_one_line_and_change_nothing(tmp_path, content, message):
  (tmp_path / "results.md").write_text("the last report")
  path = tmp_path / "results.json"
  if isinstance(content, bytes):
    path.write_bytes(content)
  elif content is not None:
    path.write_text(content)
  before = snapshot(tmp_path)
  with pytest.raises(SystemExit) as exit_:
    cli.report_command(str(tmp_path))
  error = str(exit_.value.code)
  assert error.startswith("error: " + message.format(path)), error
  assert "\n" not in error
  assert snapshot(tmp_path) == before


def test_failure_half_way_replaces_no_file(tmp_path):
  # The tables render; the curves, drawn after them, need what is missing.
  results = copy.deepcopy(RESULTS)
  del results["methods"]["lwf"]["task_il"]["average_accuracy"]
  report.write_json(tmp_path / "results.json", results)
  (tmp_path / "results.md").write_text("the last report")
  before = snapshot(tmp_path)
  with pytest.raises(SystemExit, match="KeyError: 'average_accuracy'"):
    cli.report_command(str(tmp_path))
  assert snapshot(tmp_path) == before


def test_console_script_usage_lists_the_commands():
  done = lwf_jax("train")
  assert done.returncode != 0
  assert "Usage: lwf-jax COMMAND [flags]" in done.stderr
  for command in ("run --config=FILE --workdir=DIR", "list", "report --workdir=DIR"):
    assert f"\n  {command}" in done.stderr, command
  message = "unknown command 'train'; valid commands: run, list, report"
  assert done.stderr.rstrip().endswith(message)


def test_console_script_runs_an_experiment_with_overrides(tmp_path):
  workdir = tmp_path / "run"
  done = lwf_jax(
    "run",
    f"--config={SMOKE_CONFIG}",
    f"--workdir={workdir}",
    "--config.methods=('lwf',)",
  )
  assert done.returncode == 0, done.stderr
  assert "| LwF (ours) |" in done.stdout and "Fine-tuning" not in done.stdout
  written = (workdir / "results.md").read_text()
  assert written + "\n" in done.stdout
  # What ``report`` renders from the results.json of a real run (nulls and all);
  # the files it writes are tested above.
  assert report.markdown(report.read_json(workdir / "results.json")) == written
