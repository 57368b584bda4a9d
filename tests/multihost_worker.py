"""One process of the two-process test in ``test_multihost.py``.

Run as ``python -m tests.multihost_worker <process id> <port> <out dir>``, once per
process, with two fake CPU devices (the test sets ``XLA_FLAGS`` and
``JAX_PLATFORMS`` for it). Writes what it trained to ``<out dir>/process<id>.npz``.
"""

import os
import sys

import jax
import numpy as np

from lwf_jax import methods, parallel, train
from tests import multihost_case


def main(process_id: int, port: int, out_dir: str) -> None:
  jax.distributed.initialize(
    f"127.0.0.1:{port}", num_processes=2, process_id=process_id
  )
  assert jax.process_count() == 2 and jax.local_device_count() == 2

  # 1. Steps on one fixed global batch: this process feeds its half of it.
  model, state, batch, objective, reference = multihost_case.stage()
  half = len(batch["new"]["label"]) // 2
  rows = slice(process_id * half, (process_id + 1) * half)
  batch = jax.tree.map(lambda a: a[rows], batch)
  step = train.compiled_train_step(model, objective, 2)
  state = parallel.replicate(state, 2)
  reference = parallel.replicate(reference, 2)
  for _ in range(multihost_case.NUM_STEPS):
    state, _ = step(state, parallel.shard(batch, 2), reference)
  stepped = jax.device_get(parallel.unreplicate(state.params, 2))

  # 2. A whole LwF task, each process on its shard of the data.
  old_model, old_variables = multihost_case.old_network()
  recipe = multihost_case.recipe(num_devices=2)
  new_model, trained = methods.add_task(
    old_model,
    old_variables,
    parallel.process_shard(multihost_case.NEW),
    method=methods.get_method("lwf"),
    recipe=recipe,
    rng=jax.random.key(1),
  )
  scores = multihost_case.evaluate(new_model, trained, num_devices=2)
  leaves = {
    **{f"step/{i}": a for i, a in enumerate(jax.tree.leaves(stepped))},
    **{f"task/{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(trained))},
    "scores": np.array([scores[t][s] for t in scores for s in ("task_il", "class_il")]),
  }
  np.savez(os.path.join(out_dir, f"process{process_id}.npz"), **leaves)


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
