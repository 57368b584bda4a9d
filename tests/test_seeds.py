"""Seeds as a leading axis: S runs as one vmapped program equal S runs in turn."""

import subprocess

import jax
import numpy as np
import pytest

from experiments import continual
from experiments.configs import split_mnist_smoke
from lwf_jax import export, methods, models, seeds, sequence, train, trunks
from tests import helpers

SCHEDULE, RECIPE = helpers.short_recipe()
TASKS = helpers.task_sequence()


def assert_trees_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_split_and_fold_in_give_each_seed_its_own_keys():
  rng = seeds.keys([3, 5])
  for num, parts in ((2, seeds.split(rng, 2)), (3, seeds.split(rng, 3))):
    assert len(parts) == num and all(p.shape == (2,) for p in parts)
    for s, seed in enumerate((3, 5)):
      alone = jax.random.split(jax.random.key(seed), num)
      for part, key in zip(parts, alone, strict=True):
        assert (
          jax.random.key_data(part[s]).tolist() == jax.random.key_data(key).tolist()
        )
  folded = seeds.fold_in(rng, 7)
  assert (
    jax.random.key_data(folded[1]).tolist()
    == jax.random.key_data(jax.random.fold_in(jax.random.key(5), 7)).tolist()
  )
  assert seeds.count(rng) == 2 and seeds.count(jax.random.key(0)) == 0


def test_stacked_initialisation_is_each_seeds_own():
  trunk = trunks.make_trunk("mlp_tiny")
  _, together = models.init_trunk(trunk, seeds.keys([0, 1]), (4, 4, 1))
  for s in (0, 1):
    _, alone = models.init_trunk(trunk, jax.random.key(s), (4, 4, 1))
    assert helpers.bits(seeds.take(together, s)) == helpers.bits(alone)


# Old data (joint training) and the weight penalty need nothing per seed beyond
# what these use: recordings (LwF, LFL's features) and the reference network.
@pytest.mark.parametrize("method", ["lwf", "lfl", "lwf_online"])
def test_vmapped_sequence_equals_each_seed_alone(method):
  """Recording, growth, warm-up, training and evaluation, over two seeds at once."""
  method = methods.get_method(method)
  trunk = trunks.make_trunk("mlp_tiny")
  learn = dict(schedule=SCHEDULE, recipe=RECIPE)
  model, together = methods.learn_first_task(
    trunk, TASKS[0], rng=seeds.keys([0, 1]), **learn
  )
  result = sequence.learn_sequence(
    model, together, TASKS, method=method, recipe=RECIPE, rng=seeds.keys([10, 11])
  )
  assert result.task_il.shape == result.class_il.shape == (2, 3, 3)
  for s in (0, 1):
    model, alone = methods.learn_first_task(
      trunk, TASKS[0], rng=jax.random.key(s), **learn
    )
    assert_trees_close(seeds.take(together, s), alone)
    expected = sequence.learn_sequence(
      model, alone, TASKS, method=method, recipe=RECIPE, rng=jax.random.key(10 + s)
    )
    assert_trees_close(seeds.take(result.variables, s), expected.variables)
    np.testing.assert_array_equal(result.task_il[s], expected.task_il)
    np.testing.assert_array_equal(result.class_il[s], expected.class_il)


def test_per_seed_recordings_of_the_wrong_length_raise():
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), TASKS[:2])
  state = train.create_train_state(
    seeds.stack([variables] * 2),
    trainable=(".*",),
    learning_rate=0.1,
    dropout_rng=seeds.keys([0, 1]),
  )
  recorded = np.zeros((3, 48, 3), np.float32)  # three seeds' recordings for two
  data = {"new": {**TASKS[1].train, "recorded": {"old": recorded}}}
  with pytest.raises(ValueError, match="need a leading axis of 2"):
    train.train(
      state,
      data,
      model=model,
      objective=train.Objective(),
      num_epochs=1,
      batch_size=8,
      rng=seeds.keys([0, 1]),
      num_seeds=2,
    )


def test_vmapped_seeds_match_seeds_in_turn_and_share_first_networks(tmp_path, capsys):
  """``vmap_seeds='on'``: the same protocol, each seed's first network on disk."""
  config = split_mnist_smoke.get_config()
  config.seeds, config.methods, config.reference = (0, 1), ("lwf",), True
  config.tasks = config.tasks[:3]
  config.first_task.num_epochs, config.warmup.num_epochs = 3, 1
  config.train.num_epochs = 3
  in_turn = continual.run(config, str(tmp_path / "in_turn"))
  assert not in_turn["vmapped_seeds"]
  # Vmapped, in the same work directory: seed 0's first network is loaded, seed
  # 1's trained again (vmapped, on its own) after its directory is deleted.
  config.vmap_seeds = "on"
  workdir = tmp_path / "in_turn"
  subprocess.run(["rm", "-r", str(workdir / "first_task_seed1")], check=True)
  capsys.readouterr()
  together = continual.run(config, str(workdir))
  assert capsys.readouterr().out.count("Reusing the network") == 1
  assert (workdir / "first_task_seed1").is_dir()
  assert together["vmapped_seeds"] and "vmapped program" in together["markdown"]
  for scenario in ("task_il", "class_il"):
    for seed, matrix in final_rows(in_turn, "lwf", scenario).items():
      vmapped = final_rows(together, "lwf", scenario)[seed]
      # The same steps; vmapped matmuls round differently, by an example or two.
      np.testing.assert_allclose(vmapped, matrix, atol=0.03)
  for seed, accuracies in in_turn["reference"].items():
    np.testing.assert_allclose(together["reference"][seed], accuracies, atol=0.03)


def final_rows(results, method, scenario):
  """``{seed: R}`` of one method."""
  seeds = results["methods"][method]["seeds"]
  return {seed: np.array(r[scenario], float) for seed, r in seeds.items()}


def test_one_vmapped_seed_exports_its_network(tmp_path):
  """Vmapped with a single seed, the variables still carry the seed axis."""
  config = split_mnist_smoke.get_config()  # model mlp_tiny
  model, variables = helpers.network(trunks.make_trunk("mlp_tiny"), TASKS)
  outcome = sequence.SequenceResult(
    model, seeds.stack([variables]), np.zeros((1, 3, 3)), np.zeros((1, 3, 3)), 0.0
  )
  continual.export_networks(
    config, str(tmp_path), "lwf", outcome, group=(7,), task_list=TASKS
  )
  loaded = export.load(str(tmp_path / "export" / "lwf_seed7"))
  assert helpers.bits(loaded.variables) == helpers.bits(variables)
