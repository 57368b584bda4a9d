r"""A seconds-long variant of ``mnist_to_uci`` for tests: less data, fewer epochs.

Run:
  python -m experiments.main --config=experiments/configs/mnist_to_uci_smoke.py \
      --workdir=workdir/mnist_to_uci_smoke
"""

from experiments.configs import mnist_to_uci


def get_config():
  config = mnist_to_uci.get_config()
  config.name = "mnist_to_uci_smoke"
  config.model = "mlp_tiny"
  config.seeds = (0,)
  config.tasks = (
    mnist_to_uci.task("mnist5k", max_train_per_class=40),
    mnist_to_uci.task("uci_digits", max_train_per_class=40),
  )
  config.batch_size = 32
  # One device, the path `make run` takes on a CPU; the tests' eight fake devices
  # are exercised by tests/test_parallel.py.
  config.num_devices = 1
  config.first_task.num_epochs = 8
  config.first_task.learning_rate = 0.1
  config.warmup.num_epochs = 2
  config.train.num_epochs = 3
  return config
