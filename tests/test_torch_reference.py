"""The benchmark's PyTorch reference: the same objective on the same network.

Skipped where PyTorch is not installed (it is optional, see the README).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwf_jax import losses, trunks

torch = pytest.importorskip("torch", reason="the PyTorch reference is optional")
torch_lwf = pytest.importorskip("experiments.torch_lwf")


def test_torch_loss_is_lwf_objective():
  rng = np.random.default_rng(0)
  new, old, recorded = (rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3))
  labels = rng.integers(0, 3, 5)
  ours = losses.lwf_objective(
    jnp.asarray(new), jnp.asarray(labels), {"old": old}, {"old": recorded}
  ).mean()
  theirs = torch_lwf.lwf_loss(
    {"new": torch.from_numpy(new), "old": torch.from_numpy(old)},
    labels=torch.from_numpy(labels),
    recorded={"old": torch.from_numpy(recorded)},
    new="new",
    temperature=2.0,
    lambda_old=1.0,
  )
  np.testing.assert_allclose(float(theirs), float(ours), rtol=1e-5)


@pytest.mark.parametrize(
  "model, shape", [("mlp", (28, 28, 1)), ("cnn", (28, 28, 1)), ("cnn_tiny", (8, 8, 1))]
)
def test_torch_trunk_has_the_same_parameters(model, shape):
  trunk = trunks.make_trunk(model)
  params = trunk.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
  ours = sum(x.size for x in jax.tree.leaves(params))
  theirs, features = torch_lwf.make_trunk(model, shape)
  assert sum(p.numel() for p in theirs.parameters()) == ours
  assert features == trunk.num_features


def test_torch_loop_times_its_steps():
  rng = np.random.default_rng(0)
  times = torch_lwf.time_steps(
    model="mlp_tiny",
    images=rng.normal(size=(64, 4, 4, 1)).astype(np.float32),
    labels=rng.integers(0, 2, 64),
    recorded={"old": rng.normal(size=(64, 3)).astype(np.float32)},
    num_classes=2,
    batch_size=16,
    optimizer="sgd",
    learning_rate=0.1,
    weight_decay=5e-4,
    steps=3,
    repeats=2,
    threads=1,
  )
  assert len(times) == 2 and all(t > 0 for t in times)
