"""Tasks added one after another: what is recorded before each, and the matrices."""

import jax
import numpy as np
import pytest

from lwf_jax import inference, methods, sequence
from tests import helpers

RECIPE = methods.Recipe(
  warmup=methods.Schedule(num_epochs=1, learning_rate=0.1),
  main=methods.Schedule(num_epochs=2, learning_rate=0.1),
  batch_size=8,
)


@pytest.fixture(scope="module")
def three_tasks():
  task_list = [
    helpers.toy_task("a", num_train=48),
    helpers.toy_task("b", num_classes=2, num_train=32, seed=1),
    helpers.toy_task("c", num_classes=4, num_train=40, seed=2),
  ]
  model, variables = methods.learn_first_task(
    "mlp_tiny",
    task_list[0],
    schedule=methods.Schedule(num_epochs=4, learning_rate=0.1),
    recipe=RECIPE,
    rng=jax.random.key(0),
  )
  return model, variables, task_list


def learn(three_tasks, num_tasks):
  model, variables, task_list = three_tasks
  return sequence.learn_sequence(
    model,
    variables,
    task_list[:num_tasks],
    method=methods.get_method("lwf"),
    recipe=RECIPE,
    rng=jax.random.key(1),
  )


def test_every_old_head_recorded_afresh_before_each_task(three_tasks, monkeypatch):
  model, variables, task_list = three_tasks
  after_b = learn(three_tasks, 2)  # the network just before task c
  recordings = []
  real_predict = inference.predict

  def spy(model, variables, images, **kwargs):
    out = real_predict(model, variables, images, **kwargs)
    if any(images is t.train["image"] for t in task_list[1:]):
      recordings.append((model.head_names, out.logits))
    return out

  monkeypatch.setattr(inference, "predict", spy)
  learn(three_tasks, 3)
  assert [heads for heads, _ in recordings] == [["a"], ["a", "b"]]
  # Task c's targets come from the network after task b, for every old head...
  images_c = task_list[2].train["image"]
  expected = real_predict(after_b.model, after_b.variables, images_c, batch_size=500)
  for head in ("a", "b"):
    np.testing.assert_array_equal(recordings[1][1][head], expected.logits[head])
  # ... not from the original network, whose head 'a' answers differently by now.
  original = real_predict(model, variables, images_c, batch_size=500).logits["a"]
  assert not np.array_equal(recordings[1][1]["a"], original)


def test_accuracy_matrices_are_lower_triangular_fractions(three_tasks):
  result = learn(three_tasks, 3)
  for matrix in (result.task_il, result.class_il):
    assert matrix.shape == (3, 3)
    assert np.isnan(matrix[np.triu_indices(3, 1)]).all()
    seen = matrix[np.tril_indices(3)]
    assert ((seen >= 0) & (seen <= 1)).all()
  lower = np.tril_indices(3)
  assert (result.class_il[lower] <= result.task_il[lower]).all()
  assert result.task_il[2, 2] > 0.5 and result.model.head_names == ["a", "b", "c"]


def test_a_network_with_more_than_the_first_head_is_refused(three_tasks):
  task_list = three_tasks[2]
  grown = learn(three_tasks, 2)
  with pytest.raises(ValueError, match="only the first task 'a'"):
    sequence.learn_sequence(
      grown.model,
      grown.variables,
      task_list,
      method=methods.get_method("lwf"),
      recipe=RECIPE,
      rng=jax.random.key(1),
    )
