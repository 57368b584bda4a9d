r"""Table 1 on offline data: add UCI digits (new task) to an MNIST network (old task).

Run:
  python -m experiments.main --config=experiments/configs/mnist_to_uci.py \
      --workdir=workdir/mnist_to_uci

Runtime: about 2.5 minutes on 2 CPU cores. Result (seed 0), test accuracy (%),
LwF absolute and the others as differences from LwF:

  LwF              old 96.50  new 99.15
  Fine-tuning          -1.40      -1.69
  Feature extr.        +1.40     -16.06
  Joint training       +1.50      -0.28
"""

import ml_collections


def task(dataset: str) -> ml_collections.ConfigDict:
  """A task of an offline data set (see ``lwf_jax.datasets``)."""
  return ml_collections.ConfigDict(
    {
      "dataset": dataset,  # a key of lwf_jax.datasets.DATASETS
      "name": "",  # the task's (and head's) name; "" means the data set's name
      "classes": (),  # original labels to keep, in head order; () means all
      "max_train_per_class": 0,  # > 0 keeps that many training images per class
    }
  )


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds the original network, new heads, shuffling and dropout
  config.model = "cnn"  # trunk, a key of lwf_jax.models.TRUNKS
  config.old_task = task("mnist5k")
  config.new_task = task("uci_digits")
  # Methods to compare, keys of lwf_jax.methods.METHODS.
  config.methods = ("lwf", "fine_tuning", "feature_extraction", "joint")

  config.batch_size = 64  # examples per task per step
  config.inference_batch_size = 500  # examples per pass when recording / evaluating
  config.momentum = 0.9  # SGD momentum (the paper's)
  config.weight_decay = 5e-4  # L2 coefficient (the paper's)
  # Stages, each with a fresh optimizer: the original network on the old task,
  # the warm-up (new head only), then training with each method's parameters.
  config.original = ml_collections.ConfigDict({"num_epochs": 10, "learning_rate": 0.05})
  config.warmup = ml_collections.ConfigDict({"num_epochs": 5, "learning_rate": 0.1})
  config.train = ml_collections.ConfigDict({"num_epochs": 20, "learning_rate": 0.02})
  # LwF's objective: L_new + lambda_old * sum over old heads of L_old at temperature.
  config.lwf = ml_collections.ConfigDict(
    {"lambda_old": 1.0, "temperature": 2.0, "scale_by_temperature_squared": False}
  )
  return config
