r"""A seconds-long variant of ``split_mnist`` for tests: less data, a smaller MLP.

Run:
  python -m experiments.main --config=experiments/configs/split_mnist_smoke.py \
      --workdir=workdir/split_mnist_smoke
"""

from experiments.configs import mnist_to_uci, split_mnist


def get_config():
  config = split_mnist.get_config()
  config.name = "split_mnist_smoke"
  config.model = "mlp_tiny"
  config.tasks = tuple(
    mnist_to_uci.task(**{**spec, "max_train_per_class": 60}) for spec in config.tasks
  )
  config.methods = ("lwf", "fine_tuning", "feature_extraction", "joint")
  config.seeds = (0,)
  config.reference = False
  config.batch_size = 32
  # One device, the path `make run` takes on a CPU; the tests' eight fake devices
  # are exercised by tests/test_parallel.py.
  config.num_devices = 1
  config.first_task.num_epochs = 10
  config.warmup.num_epochs = 2
  config.train.num_epochs = 10
  config.train.learning_rate = 1e-2  # strong enough that forgetting shows
  return config
