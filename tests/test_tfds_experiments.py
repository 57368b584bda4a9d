"""The TFDS catalog's experiments, end to end on ``tfds.testing.mock_data``.

The same code path as real data: the shipped configs, shrunk (a tiny trunk, small
images, few epochs), read their data sets through ``tfds.data_source``.
"""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import continual
from experiments.configs import cifar100_split, mnist_to_uci, paper


def shrink(config):
  config.model = "cnn_tiny"
  config.seeds = (0,)
  config.compute_dtype = "float32"
  config.num_devices = 1
  config.batch_size = 8
  config.inference_batch_size = 16
  config.first_task.num_epochs = 2
  config.warmup.num_epochs = 1
  config.train.num_epochs = 1
  return config


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  """MNIST, then VOC (multi-label), then CUB, with the paper's input pipeline."""
  config = shrink(paper.get_config("mnist,voc"))
  size = {"image_size": 20, "channels": 3, "data_dir": ""}
  config.tasks = (
    mnist_to_uci.task("mnist", **size),
    mnist_to_uci.task("voc", **size),
    mnist_to_uci.task("cub", **size),
  )
  config.augment.crop_size = 16
  config.methods = ("lwf", "fine_tuning_fc", "joint", "lfl")
  workdir = str(tmp_path_factory.mktemp("mixed"))
  with tfds.testing.mock_data(num_examples=40):
    return workdir, continual.run(config, workdir)


def test_multi_label_run_writes_task_incremental_results(mixed):
  workdir, results = mixed
  assert results["scenarios"] == ["task_il"]
  assert results["multi_label_tasks"] == ["voc"]
  assert sorted(os.listdir(workdir)) == [
    "checkpoints",
    "curves_task_il.png",
    "export",
    "first_task_seed0",
    "logs",
    "matrix_task_il.png",
    "results.json",
    "results.md",
  ]
  with open(os.path.join(workdir, "results.json")) as file:
    written = json.load(file)
  assert written["config"]["augment"] == {"crop_size": 16, "pad": 0, "flip": True}
  for name, entry in written["methods"].items():
    matrix = np.array(entry["seeds"]["0"]["task_il"], float)
    assert matrix.shape == (3, 3), name
    lower = matrix[np.tril_indices(3)]
    assert np.all((lower >= 0) & (lower <= 1)), name
    assert np.isnan(np.array(entry["seeds"]["0"]["class_il"], float)[2, 1]), name
  assert "mean average precision" in results["markdown"]


def test_first_network_keeps_the_old_tasks_mean_and_input_size(mixed):
  workdir, _ = mixed
  with open(os.path.join(workdir, "results.json")) as file:
    config = json.load(file)["config"]
  assert config["subtract_mean"] and config["augment"]["crop_size"] == 16


def test_cifar100_sequence_config_loads_ten_tasks(tmp_path):
  config = shrink(cifar100_split.get_config())
  with tfds.testing.mock_data(num_examples=300):
    task_list = continual.check_config(config)
  assert [t.name for t in task_list] == [f"cifar100_{k}" for k in range(10)]
  assert all(t.num_classes == 10 and t.image_shape == (32, 32, 3) for t in task_list)
  assert task_list[3].classes == tuple(range(30, 40))
