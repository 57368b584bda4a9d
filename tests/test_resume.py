"""Checkpoints and resume: a run stopped anywhere and resumed ends bit-identical."""

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import continual
from lwf_jax import methods, resume, seeds, sequence, trunks
from tests import helpers

SCHEDULE, RECIPE = helpers.short_recipe()
TASKS = helpers.task_sequence()
SETTINGS = {"method": "lwf", "seed": 0}


class Crash(Exception):
  """Stands in for the process dying."""


@functools.cache
def first_network(seed_list):
  return methods.learn_first_task(
    trunks.make_trunk("mlp_tiny"),
    TASKS[0],
    schedule=SCHEDULE,
    recipe=RECIPE,
    rng=seeds.keys(seed_list) if len(seed_list) > 1 else jax.random.key(seed_list[0]),
  )


def learn(directory, method, seed_list, *, every_steps=6, settings=SETTINGS):
  """One run; ``seed_list`` of two seeds: vmapped."""
  model, variables = first_network(seed_list)
  rng = seeds.keys(seed_list) if len(seed_list) > 1 else jax.random.key(seed_list[0])
  checkpoints = resume.RunCheckpoints(directory, settings, every_steps=every_steps)
  try:
    return sequence.learn_sequence(
      model,
      variables,
      TASKS,
      method=methods.get_method(method),
      recipe=RECIPE,
      rng=seeds.fold_in(rng, 1),
      checkpoints=checkpoints,
    )
  finally:
    checkpoints.close()


def crash_after(monkeypatch, saves):
  """Makes the ``saves + 1``-th checkpoint write raise :class:`Crash`."""
  count = {"saves": 0}
  original = resume.RunCheckpoints._save

  def save(self, *args):
    if count["saves"] == saves:
      raise Crash
    count["saves"] += 1
    original(self, *args)

  monkeypatch.setattr(resume.RunCheckpoints, "_save", save)
  return count


# Per task: warm-up and training of 2 epochs of 6 steps each, a checkpoint after
# every epoch, then one after the task: saves 0-4 in task 1, 5-9 in task 2.
# Stopping at save k resumes from save k - 1: 1, in task 1's warm-up; 3, in its
# training; 5, after it; 7, in task 2's warm-up; 8, in its training.
@pytest.mark.parametrize(
  "method, rng, stops",
  [
    ("lwf", (0,), (1, 5, 8)),
    ("lwf_online", (1,), (3,)),  # the reference network, restored
    ("lfl", (2, 3), (7,)),  # recorded features; two vmapped seeds
  ],
)
def test_stopped_at_any_checkpoint_and_resumed_ends_bit_identical(
  tmp_path, monkeypatch, method, rng, stops
):
  expected = learn(tmp_path / "whole", method, rng)
  for saves in stops:
    directory = tmp_path / f"stopped{saves}"
    with monkeypatch.context() as patch:
      crash_after(patch, saves)
      with pytest.raises(Crash):
        learn(directory, method, rng)
    resumed = learn(directory, method, rng)
    assert helpers.bits(resumed.variables) == helpers.bits(expected.variables)
    np.testing.assert_array_equal(resumed.task_il, expected.task_il)
    np.testing.assert_array_equal(resumed.class_il, expected.class_il)
    assert resumed.model == expected.model


def test_a_finished_run_is_read_back_without_training(tmp_path, monkeypatch):
  expected = learn(tmp_path, "lwf", (0,))
  monkeypatch.setattr(methods, "add_task", None)  # would fail if called
  again = learn(tmp_path, "lwf", (0,))
  # The time it took, saved after the last task (the run went on to save).
  assert 0 < again.wall_time_s <= expected.wall_time_s
  assert helpers.bits(again.variables) == helpers.bits(expected.variables)
  np.testing.assert_array_equal(again.task_il, expected.task_il)


def test_other_settings_refused_naming_them_and_the_directory(tmp_path):
  learn(tmp_path, "lwf", (0,), every_steps=0)
  before = sorted(p.name for p in tmp_path.rglob("*"))
  with pytest.raises(ValueError, match=rf"other settings \(seed\).*{tmp_path}"):
    learn(tmp_path, "lwf", (0,), settings={**SETTINGS, "seed": 1})
  assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("damage", ["metadata", "arrays"])
def test_damaged_checkpoint_refused_naming_it(tmp_path, damage):
  learn(tmp_path, "lwf", (0,), every_steps=0)
  if damage == "metadata":
    (tmp_path / "2" / "metadata" / "metadata").write_text("{not json")
  else:
    for path in (tmp_path / "2" / "arrays").rglob("d/*"):
      path.write_bytes(b"")
  with pytest.raises(ValueError, match=f"cannot read the checkpoint at {tmp_path}"):
    learn(tmp_path, "lwf", (0,))


KILLED_CONFIG = """
from experiments.configs import split_mnist_smoke


def get_config():
  config = split_mnist_smoke.get_config()
  config.tasks = config.tasks[:3]
  config.methods = ("lwf",)
  config.first_task.num_epochs, config.warmup.num_epochs = 2, 1
  config.train.num_epochs = 4
  config.checkpoint_every_steps = 1  # every epoch
  return config
"""


def read_positions(directory):
  """The positions of the run's finished checkpoints in ``directory``."""
  positions = []
  for path in directory.glob("*/metadata/metadata"):
    try:
      positions.append(json.loads(path.read_text())["position"])
    except (OSError, ValueError):  # being written
      pass
  return positions


def test_killed_mid_task_and_run_again_gives_the_same_results(tmp_path):
  """SIGKILL a real run during its second task's training; the same command
  resumes it, and the results equal an uninterrupted run's bit for bit."""
  config_file = tmp_path / "killed.py"
  config_file.write_text(KILLED_CONFIG)
  command = [
    sys.executable,
    "-m",
    "experiments.main",
    f"--config={config_file}",
    f"--workdir={tmp_path / 'run'}",
  ]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  process = subprocess.Popen(
    command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  checkpoints = tmp_path / "run" / "checkpoints" / "lwf_seed0"
  deadline = time.monotonic() + 300
  while process.poll() is None and time.monotonic() < deadline:
    if {"task": 2, "stage": "train", "epochs_done": 2} in read_positions(checkpoints):
      process.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before the kill"
  assert not (tmp_path / "run" / "results.json").exists()
  done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
  with open(tmp_path / "run" / "results.json") as file:
    resumed = json.load(file)
  spec = importlib.util.spec_from_file_location("killed", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  whole = continual.run(module.get_config(), str(tmp_path / "whole"))
  for scenario in ("task_il", "class_il"):
    np.testing.assert_array_equal(
      np.array(resumed["methods"]["lwf"]["seeds"]["0"][scenario], float),
      np.array(whole["methods"]["lwf"]["seeds"]["0"][scenario], float),
    )


def test_changed_bytes_in_an_array_refused(tmp_path):
  """A flipped byte inside a stored array (no error from TensorStore) is caught by
  the array digests."""
  learn(tmp_path, "lwf", (0,), every_steps=0)
  largest = max(
    (tmp_path / "2" / "arrays").rglob("d/*"), key=lambda p: p.stat().st_size
  )
  data = bytearray(largest.read_bytes())
  data[len(data) // 2] ^= 0xFF
  largest.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=f"checkpoint at {tmp_path}.* delete that"):
    learn(tmp_path, "lwf", (0,))


def test_resuming_mid_stage_reads_the_checkpoint_once(tmp_path, monkeypatch):
  with monkeypatch.context() as patch:
    crash_after(patch, 3)  # in task 1's training
    with pytest.raises(Crash):
      learn(tmp_path, "lwf", (0,))
  reads = []
  original = resume.Saved._read_arrays
  monkeypatch.setattr(
    resume.Saved, "_read_arrays", lambda self: reads.append(1) or original(self)
  )
  learn(tmp_path, "lwf", (0,))
  assert len(reads) == 1
