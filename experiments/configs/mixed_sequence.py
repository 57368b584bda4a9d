r"""A sequence of different data sets: MNIST, UCI digits, permuted MNIST, permuted UCI.

Run:
  python -m experiments.main --config=experiments/configs/mixed_sequence.py \
      --workdir=workdir/mixed_sequence
"""

import ml_collections

from experiments.configs import mnist_to_uci


def get_config():
  config = mnist_to_uci.get_config()
  config.name = "mixed_sequence"
  config.model = "mlp"
  config.tasks = (
    mnist_to_uci.task("mnist5k"),
    mnist_to_uci.task("uci_digits"),
    mnist_to_uci.task("mnist5k", permutation_seed=1),
    mnist_to_uci.task("uci_digits", permutation_seed=1),
  )
  config.seeds = (0, 1, 2)
  config.batch_size = 128
  config.optimizer = "adam"
  config.weight_decay = 0.0
  config.first_task = ml_collections.ConfigDict(
    {"num_epochs": 10, "learning_rate": 1e-3}
  )
  config.warmup = ml_collections.ConfigDict({"num_epochs": 3, "learning_rate": 1e-3})
  config.train = ml_collections.ConfigDict({"num_epochs": 15, "learning_rate": 1e-3})
  return config
