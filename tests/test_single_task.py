"""End to end: the single-new-task experiment on the offline data, shrunk."""

import json
import os
import subprocess
import sys

import pytest

from experiments import single_task
from experiments.configs import mnist_to_uci_smoke

SMOKE_CONFIG = "experiments/configs/mnist_to_uci_smoke.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("smoke"))
  return workdir, single_task.run(mnist_to_uci_smoke.get_config(), workdir)


def test_results_above_chance_and_files_written(smoke_run):
  workdir, results = smoke_run
  assert sorted(os.listdir(workdir)) == [
    "original_network",
    "results.json",
    "results.md",
  ]
  written = json.load(open(os.path.join(workdir, "results.json")))
  assert written["config"]["model"] == "mlp_tiny"
  assert written["methods"] == results["methods"]
  assert list(results["methods"]) == [
    "lwf",
    "fine_tuning",
    "feature_extraction",
    "joint",
  ]
  assert results["original"]["old_accuracy"] > 0.6  # chance is 0.1
  for name, row in results["methods"].items():
    assert row["old_accuracy"] > 0.5, name
    assert row["new_accuracy"] > 0.5, name
    assert row["wall_time_s"] > 0
  table = open(os.path.join(workdir, "results.md")).read()
  assert "| LwF (ours) |" in table and "| Joint training |" in table


def test_feature_extraction_keeps_the_original_accuracy(smoke_run):
  _, results = smoke_run
  feature_extraction = results["methods"]["feature_extraction"]
  assert feature_extraction["old_accuracy"] == results["original"]["old_accuracy"]


def test_rerun_reuses_the_original_network(smoke_run):
  workdir, results = smoke_run
  checkpoint = os.path.join(workdir, "original_network")
  stamp = os.stat(checkpoint).st_mtime_ns
  config = mnist_to_uci_smoke.get_config()
  config.methods = ("lwf",)
  again = single_task.run(config, workdir)
  assert os.stat(checkpoint).st_mtime_ns == stamp
  assert again["original"]["old_accuracy"] == results["original"]["old_accuracy"]
  assert again["methods"]["lwf"] == {
    **results["methods"]["lwf"],
    "wall_time_s": again["methods"]["lwf"]["wall_time_s"],
  }


def test_other_settings_refused_without_touching_the_workdir(smoke_run):
  workdir, _ = smoke_run
  before = open(os.path.join(workdir, "results.json")).read()
  config = mnist_to_uci_smoke.get_config()
  config.seed = 1
  config.original.num_epochs = 3
  with pytest.raises(ValueError, match=r"other settings \(schedule, seed\)"):
    single_task.run(config, workdir)
  assert open(os.path.join(workdir, "results.json")).read() == before


def run_main(*args):
  return subprocess.run(
    [sys.executable, "-m", "experiments.main", *args],
    cwd=ROOT,
    check=False,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_command_line(tmp_path):
  workdir = str(tmp_path / "cli")
  done = run_main(f"--config={SMOKE_CONFIG}", f"--workdir={workdir}")
  assert done.returncode == 0, done.stderr
  assert "| LwF (ours) |" in done.stdout
  assert os.path.exists(os.path.join(workdir, "results.json"))


@pytest.mark.parametrize(
  "override, message",
  [
    ("--config.model=alexnet9000", "unknown model 'alexnet9000'; valid models: mlp"),
    ("--config.lwf.temperature=0", "temperature must be > 0"),
    ("--config.batch_size=100000", "batch size 100000 exceeds"),
    ("--config.new_task.dataset=cifar", "unknown data set 'cifar'; valid data sets"),
  ],
)
def test_bad_config_is_one_clear_line_and_writes_nothing(tmp_path, override, message):
  workdir = str(tmp_path / "bad")
  done = run_main(f"--config={SMOKE_CONFIG}", f"--workdir={workdir}", override)
  assert done.returncode != 0
  assert f"error: {message}" in done.stderr
  assert "Traceback" not in done.stderr
  assert not os.path.exists(workdir)
