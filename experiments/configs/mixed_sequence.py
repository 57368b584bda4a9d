r"""A sequence of different data sets: MNIST, UCI digits, permuted MNIST, permuted UCI.

The network and optimizer of ``split_mnist`` (784-400-400 MLP, Adam 1e-3, batches
of 128).

Run:
  python -m experiments.main --config=experiments/configs/mixed_sequence.py \
      --workdir=workdir/mixed_sequence

Runtime: 1.5 minutes on 2 CPU cores. Result (Task-IL average accuracy %): LwF
84.41 ± 2.19, fine-tuning 85.79 ± 0.97, feature extraction 92.40, joint 96.34.
"""

import ml_collections

from experiments.configs import mnist_to_uci, split_mnist


def get_config():
  config = split_mnist.get_config()
  config.name = "mixed_sequence"
  config.tasks = (
    mnist_to_uci.task("mnist5k"),
    mnist_to_uci.task("uci_digits"),
    mnist_to_uci.task("mnist5k", permutation_seed=1),
    mnist_to_uci.task("uci_digits", permutation_seed=1),
  )
  config.methods = ("lwf", "fine_tuning", "feature_extraction", "joint")
  config.reference = False
  config.published = ml_collections.ConfigDict()
  config.first_task.num_epochs = 10
  config.warmup.num_epochs = 3
  config.train.num_epochs = 15
  return config
