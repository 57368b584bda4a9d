"""End to end: the shipped experiments, shrunk, by API and by command line."""

import csv
import json
import os
import pkgutil
import shutil
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from experiments import configs, continual, logs, summary
from experiments.configs import mnist_to_uci_smoke, split_mnist_smoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_CONFIG = "experiments/configs/mnist_to_uci_smoke.py"


def final_rows(results, method, scenario="task_il"):
  """``{seed: R}`` of one method."""
  seeds = results["methods"][method]["seeds"]
  return {seed: np.array(r[scenario], float) for seed, r in seeds.items()}


@pytest.fixture(scope="module")
def single_task(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("single"))
  return workdir, continual.run(mnist_to_uci_smoke.get_config(), workdir)


@pytest.fixture(scope="module")
def split_mnist(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("split"))
  return workdir, continual.run(split_mnist_smoke.get_config(), workdir)


def event_tags(directory):
  """The scalar tags in a directory's TensorBoard event files."""
  tags = set()
  for name in os.listdir(directory):
    with open(os.path.join(directory, name), "rb") as file:
      data = file.read()
    offset = 0
    while offset < len(data):  # records: length, its CRC, the event, its CRC
      (length,) = struct.unpack("<Q", data[offset : offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
      tags |= {value.tag for value in event.summary.value}
      offset += 16 + length
  return tags


class TestSingleNewTask:
  def test_files_written_and_accuracy_above_chance(self, single_task):
    workdir, results = single_task
    assert sorted(os.listdir(workdir)) == [
      "checkpoints",
      "curves_class_il.png",
      "curves_task_il.png",
      "export",
      "first_task_seed0",
      "logs",
      "matrix_class_il.png",
      "matrix_task_il.png",
      "results.json",
      "results.md",
    ]
    with open(os.path.join(workdir, "results.json")) as file:
      written = json.load(file)
    assert written["config"]["model"] == "mlp_tiny"
    assert list(written["methods"]) == [
      "lwf",
      "fine_tuning",
      "feature_extraction",
      "joint",
    ]
    for name in written["methods"]:
      matrix = final_rows(written, name)["0"]
      assert matrix[1, 0] > 0.5 and matrix[1, 1] > 0.5, name  # chance: 0.1
      assert np.isnan(matrix[0, 1])
    with open(os.path.join(workdir, "results.md")) as file:
      text = file.read()
    assert "| LwF (ours) |" in text and "old task: mnist5k" in text
    assert results["markdown"] == text

  def test_logs_hold_the_training_metrics_and_the_results(self, single_task):
    workdir, results = single_task
    with open(os.path.join(workdir, "logs", "metrics.csv"), newline="") as file:
      rows = list(csv.DictReader(file))
    assert list(rows[0]) == list(logs.COLUMNS)
    every = mnist_to_uci_smoke.get_config().log_every_steps
    last = {}  # each stage's last step, logged whatever the interval
    for r in rows:
      stage = (r["run"], r["task"], r["stage"])
      last[stage] = max(last.get(stage, 0), int(r["step"]))
    for run in ("first task", *results["methods"]):
      training = [r for r in rows if r["run"] == run and r["stage"] != "evaluate"]
      assert training, run
      for r in training:
        step = int(r["step"])
        assert step % every == 0 or step == last[r["run"], r["task"], r["stage"]]
    # Distillation terms of LwF's old head, and only where LwF distils.
    kl = {(r["run"], r["stage"]) for r in rows if r["metric"] == "kl/mnist5k"}
    assert kl == {("lwf", "train")}
    # Every accuracy in the results, logged after its task.
    for run, entry in results["methods"].items():
      for scenario in ("task_il", "class_il"):
        matrix = entry["seeds"]["0"][scenario]
        for i, task in enumerate(results["tasks"]):
          for j, seen in enumerate(results["tasks"][: i + 1]):
            (row,) = [
              r
              for r in rows
              if (r["run"], r["stage"], r["step"], r["metric"])
              == (run, "evaluate", str(i), f"{scenario}/{seen}")
            ]
            assert (row["task"], float(row["value"])) == (task, matrix[i][j])
    tags = event_tags(os.path.join(workdir, "logs", "tensorboard", "lwf_seed0"))
    assert {"uci_digits/train/loss", "uci_digits/train/kl/mnist5k"} <= tags
    assert "uci_digits/evaluate/task_il/mnist5k" in tags

  def test_feature_extraction_keeps_the_old_accuracy_exactly(self, single_task):
    _, results = single_task
    matrix = final_rows(results, "feature_extraction")["0"]
    assert matrix[1, 0] == matrix[0, 0]

  def test_rerun_reuses_the_first_network(self, single_task, capsys):
    workdir, results = single_task
    checkpoint = os.path.join(workdir, "first_task_seed0")
    stamp = os.stat(checkpoint).st_mtime_ns
    config = mnist_to_uci_smoke.get_config()
    config.methods = ("lwf",)
    # Without LwF's checkpoint, so that it trains again from the reused network
    # (with it, the run would be read back).
    shutil.rmtree(os.path.join(workdir, "checkpoints", "lwf_seed0"))
    again = continual.run(config, workdir)
    assert "Reusing the network trained on 'mnist5k'" in capsys.readouterr().out
    assert os.stat(checkpoint).st_mtime_ns == stamp
    np.testing.assert_array_equal(
      final_rows(again, "lwf")["0"], final_rows(results, "lwf")["0"]
    )

  def test_other_settings_refused_without_touching_the_workdir(self, single_task):
    workdir, _ = single_task
    with open(os.path.join(workdir, "results.json")) as file:
      before = file.read()
    config = mnist_to_uci_smoke.get_config()
    config.first_task.num_epochs = 3
    with pytest.raises(ValueError, match=r"other settings \(schedule\)"):
      continual.run(config, workdir)
    with open(os.path.join(workdir, "results.json")) as file:
      assert file.read() == before

  def test_every_seed_checked_before_any_work(self, single_task):
    # Seed 0's saved network has other settings: refused before seed 1 is trained.
    workdir, _ = single_task
    config = mnist_to_uci_smoke.get_config()
    config.seeds = (1, 0)
    config.first_task.learning_rate = 0.05
    with pytest.raises(ValueError, match=r"first_task_seed0 was trained with other"):
      continual.run(config, workdir)
    assert not os.path.exists(os.path.join(workdir, "first_task_seed1"))

  def test_stale_partial_results_deleted_at_the_start(self, single_task):
    workdir, _ = single_task
    partial = os.path.join(workdir, "results.partial.json")
    with open(partial, "w") as file:
      json.dump({"methods": {"lfl": {}}}, file)
    config = mnist_to_uci_smoke.get_config()
    config.methods = ("feature_extraction",)
    config.lwf.lambda_old = 1e38  # unused by feature extraction
    continual.run(config, workdir)
    assert not os.path.exists(partial)

  def test_equivalent_task_spec_is_the_same_network(self, single_task, capsys):
    workdir, _ = single_task
    config = mnist_to_uci_smoke.get_config()
    config.methods = ("feature_extraction",)
    config.tasks = (
      {**config.tasks[0], "name": "mnist5k", "classes": tuple(range(10))},
      config.tasks[1],
    )
    continual.run(config, workdir)
    assert "Reusing" in capsys.readouterr().out


class TestSplitMnist:
  """The outcomes the paper and the continual-learning literature report."""

  def test_lwf_beats_fine_tuning_task_incremental(self, split_mnist):
    _, results = split_mnist
    lwf = results["methods"]["lwf"]["task_il"]["final_average_accuracy"]["mean"]
    tuned = results["methods"]["fine_tuning"]["task_il"]["final_average_accuracy"]
    assert lwf > tuned["mean"] + 0.05, (lwf, tuned)

  def test_feature_extraction_keeps_every_old_task_exactly(self, split_mnist):
    _, results = split_mnist
    matrix = final_rows(results, "feature_extraction")["0"]
    for j in range(5):
      assert (matrix[j:, j] == matrix[j, j]).all(), matrix

  def test_joint_training_at_least_as_good_as_lwf_on_old_tasks(self, split_mnist):
    _, results = split_mnist
    joint = final_rows(results, "joint")["0"][-1, :-1].mean()
    lwf = final_rows(results, "lwf")["0"][-1, :-1].mean()
    assert joint >= lwf - 0.005, (joint, lwf)

  def test_both_scenarios_and_published_numbers_reported(self, split_mnist):
    workdir, results = split_mnist
    class_il = final_rows(results, "lwf", "class_il")["0"]
    task_il = final_rows(results, "lwf")["0"]
    assert (class_il[-1] <= task_il[-1] + 1e-12).all()  # the harder scenario
    with open(os.path.join(workdir, "results.md")) as file:
      text = file.read()
    # A smaller network than the published one: their numbers are not shown.
    assert "published" not in text.lower() and "99.60" not in text


def test_lambda_sweep_runs_each_value_for_distilling_methods_only():
  config = mnist_to_uci_smoke.get_config()
  config.methods = ("lwf", "fine_tuning")
  config.lambda_old_sweep = (0.5, 2.0)
  runs = continual.method_runs(config)
  assert list(runs) == ["lwf (λo=0.5)", "lwf (λo=2)", "fine_tuning"]
  assert runs["lwf (λo=2)"][1].objective.lambda_old == 2.0


def test_lambda_sweep_repeated_value_raises():
  config = mnist_to_uci_smoke.get_config()
  config.lambda_old_sweep = (1, 0.5, 1.0)
  with pytest.raises(ValueError, match="lambda_old_sweep repeats a value"):
    continual.method_runs(config)


# Configs of the TFDS catalog's data sets: not offline, so not in the summary;
# tests/test_tfds_experiments.py runs them on mock data.
CATALOG_CONFIGS = {"paper", "cifar100_split"}


def test_every_shipped_config_is_valid_and_summarised():
  names = {
    module.name
    for module in pkgutil.iter_modules(configs.__path__)
    if not module.name.endswith("_smoke")
  } - CATALOG_CONFIGS
  assert names == set(summary.EXPERIMENTS)
  for name in sorted(names):
    config = summary.load_config(name)
    continual.check_config(config)
    assert config.name == name


def test_summary_reuses_unchanged_results(tmp_path, monkeypatch):
  config = mnist_to_uci_smoke.get_config()
  config.methods = ("feature_extraction",)
  continual.run(config, str(tmp_path / "toy"))
  monkeypatch.setattr(summary, "load_config", lambda _: config)

  def fail(*args):
    raise AssertionError("an unchanged experiment was run again")

  monkeypatch.setattr(continual, "run", fail)
  text = summary.summarize(str(tmp_path), ["toy"], reuse=True)
  assert "| Feature extraction |" in text
  with open(tmp_path / "SUMMARY.md") as file:
    assert file.read() == text
  config.seeds = (1,)  # a changed config is run again
  with pytest.raises(AssertionError, match="run again"):
    summary.summarize(str(tmp_path), ["toy"], reuse=True)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "", '"text"'])
def test_summary_runs_again_over_unreadable_results(tmp_path, content):
  path = tmp_path / "results.json"
  path.write_text(content)
  assert summary.reusable(str(path), mnist_to_uci_smoke.get_config()) is None


def smoke(**overrides):
  config = mnist_to_uci_smoke.get_config()
  for path, value in overrides.items():
    *parents, field = path.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[field] = value
  return config


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"model": "alexnet9000"}, "unknown model 'alexnet9000'; valid models: mlp"),
    ({"vmap_seeds": "yes"}, "vmap_seeds must be one of auto, on, off"),
    ({"lwf.temperature": 0.0}, "temperature must be finite and > 0"),
    ({"lwf.lambda_old": float("inf")}, "lambda_old must be finite"),
    ({"train.learning_rate": float("inf")}, "learning_rate must be finite"),
    ({"warmup.num_epochs": -1}, "num_epochs must be >= 0"),
    ({"batch_size": 100000}, "batch size 100000 exceeds"),
    ({"optimizer": "rmsprop"}, "valid optimizers: sgd, adam"),
    ({"methods": ("lwf", "lwf")}, "config.methods repeat a method"),
    ({"methods": ("ewc",)}, "unknown method 'ewc'"),
    ({"methods": ()}, "config.methods is empty"),
    ({"seeds": (-1,)}, r"config.seeds must be integers in \[0, 2\*\*31\)"),
    ({"seeds": ()}, "config.seeds must be a non-empty tuple"),
    ({"seeds": (0.5,)}, "config.seeds must be integers"),
    ({"tasks": ({"dataset": "mnist5k"},)}, "at least two tasks"),
    ({"tasks": ({"dataset": "mnist5k"}, {"dataset": "cifar"})}, "unknown data set"),
    ({"tasks": ({"dataset": "mnist5k"}, {"dataset": "mnist5k"})}, "distinct"),
    ({"tasks": ({"dataset": "mnist5k"}, {"set": "x"})}, "a task needs 'dataset'"),
    (
      {"tasks": ({"dataset": "mnist5k"}, {"dataset": "uci_digits", "classes": (3,)})},
      "at least 2 classes",
    ),
    (
      {"tasks": ({"dataset": "mnist5k", "max_train_per_class": -1}, {"dataset": "x"})},
      "max_train_per_class must be >= 0",
    ),
    (
      {
        "tasks": (
          {"dataset": "mnist5k"},
          {"dataset": "uci_digits", "classes": ([1], [2])},
        )
      },
      "classes must be integers",
    ),
    ({"lambda_old_sweep": (0.5, 0.50)}, "lambda_old_sweep repeats a value"),
  ],
)
def test_bad_config_raises_before_any_work(tmp_path, overrides, message):
  workdir = tmp_path / "bad"
  with pytest.raises(ValueError, match=message):
    continual.run(smoke(**overrides), str(workdir))
  assert not workdir.exists()
