r"""Permuted MNIST: MNIST, then four tasks with fixed random pixel permutations.

Run:
  python -m experiments.main --config=experiments/configs/permuted_mnist.py \
      --workdir=workdir/permuted_mnist
"""

import ml_collections

from experiments.configs import mnist_to_uci


def get_config():
  config = mnist_to_uci.get_config()
  config.name = "permuted_mnist"
  config.model = "mlp"
  permuted = [mnist_to_uci.task("mnist5k", permutation_seed=s) for s in range(1, 5)]
  config.tasks = (mnist_to_uci.task("mnist5k"), *permuted)
  config.methods = ("lwf", "fine_tuning", "feature_extraction", "joint")
  config.seeds = (0, 1, 2)
  config.batch_size = 128
  config.optimizer = "adam"
  config.weight_decay = 0.0
  config.first_task = ml_collections.ConfigDict(
    {"num_epochs": 10, "learning_rate": 1e-3}
  )
  config.warmup = ml_collections.ConfigDict({"num_epochs": 2, "learning_rate": 1e-3})
  config.train = ml_collections.ConfigDict({"num_epochs": 10, "learning_rate": 1e-3})
  return config
