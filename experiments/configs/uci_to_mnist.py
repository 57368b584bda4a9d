r"""Table 1, the other way round: add MNIST (new task) to a UCI-digits network.

Run:
  python -m experiments.main --config=experiments/configs/uci_to_mnist.py \
      --workdir=workdir/uci_to_mnist
"""

from experiments.configs import mnist_to_uci


def get_config():
  config = mnist_to_uci.get_config()
  config.name = "uci_to_mnist"
  config.tasks = (mnist_to_uci.task("uci_digits"), mnist_to_uci.task("mnist5k"))
  config.first_task.num_epochs = 25  # UCI digits has 1,442 training images
  config.train.num_epochs = 8  # MNIST has 4,000
  config.warmup.num_epochs = 2
  return config
