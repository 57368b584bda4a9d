"""Two processes on loopback (``jax.distributed``, CPU collectives) train in step
and agree with one process.

Each worker process (``multihost_worker.py``) has two fake CPU devices, so the
pmapped step spans four devices in two processes.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from lwf_jax import methods, parallel, train
from tests import multihost_case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("multihost")
  port = free_port()
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    "JAX_PLATFORMS": "cpu",
  }
  workers = [
    subprocess.Popen(
      [sys.executable, "-m", "tests.multihost_worker", str(i), str(port), out_dir],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  for worker in workers:
    try:
      output, _ = worker.communicate(timeout=300)
    except subprocess.TimeoutExpired:
      for w in workers:
        w.kill()
      pytest.fail("the two-process run did not finish in 300 s")
    assert worker.returncode == 0, output[-3000:]
  return [dict(np.load(out_dir / f"process{i}.npz")) for i in range(2)]


def test_processes_hold_bit_identical_state(processes):
  first, second = processes
  assert first.keys() == second.keys()
  for name in first:
    assert first[name].tobytes() == second[name].tobytes(), name


def test_steps_agree_with_one_process_on_the_same_global_batch(processes):
  model, state, batch, objective, reference = multihost_case.stage()
  step = train.compiled_train_step(model, objective, 4)
  state = parallel.replicate(state, 4)
  reference = parallel.replicate(reference, 4)
  for _ in range(multihost_case.NUM_STEPS):
    state, _ = step(state, parallel.shard(batch, 4), reference)
  expected = jax.tree.leaves(parallel.unreplicate(state.params, 4))
  for i, leaf in enumerate(expected):
    np.testing.assert_allclose(processes[0][f"step/{i}"], leaf, rtol=1e-5, atol=1e-6)


def test_sharded_evaluation_counts_every_example_once(processes):
  # The two processes' summed counts equal one process's on the whole test sets.
  model, _ = multihost_case.old_network()
  model, variables = methods.add_task(
    model,
    multihost_case.old_network()[1],
    multihost_case.NEW,
    method=methods.get_method("lwf"),
    recipe=multihost_case.recipe(num_devices=1),
    rng=jax.random.key(1),
  )
  leaves = [processes[0][f"task/{i}"] for i in range(len(jax.tree.leaves(variables)))]
  trained = jax.tree.unflatten(jax.tree.structure(variables), leaves)
  scores = multihost_case.evaluate(model, trained, num_devices=1)
  expected = [scores[t][s] for t in scores for s in ("task_il", "class_il")]
  np.testing.assert_allclose(processes[0]["scores"], expected, atol=1e-12)
  # And the sharded run learned the new task (chance is 0.25).
  assert scores["new"]["task_il"] > 0.6
