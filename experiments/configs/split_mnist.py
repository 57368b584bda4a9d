r"""Split MNIST: five tasks of two digits each (0/1, 2/3, ..., 8/9), one head each.

The setting of van de Ven & Tolias (2019), "Three scenarios for continual
learning": a 784-400-400 MLP, Adam with learning rate 1e-3, batches of 128, so
their published numbers are printed beside ours. Ours uses the 5,000-digit
offline subset (800 training images per task, not ~12,000) and fewer iterations
per task, so the comparison is of orders, not decimals.

Run:
  python -m experiments.main --config=experiments/configs/split_mnist.py \
      --workdir=workdir/split_mnist

Runtime: 2.4 minutes on 2 CPU cores. Result (Task-IL average accuracy %): LwF
98.97 ± 0.12, fine-tuning 96.43 ± 1.13, feature extraction 98.23, joint 98.93,
LFL 98.67, L2 97.27; Class-IL LwF 59.90 ± 2.97.
"""

import ml_collections

from experiments.configs import mnist_to_uci


def get_config():
  config = mnist_to_uci.get_config()
  config.name = "split_mnist"
  config.model = "mlp"
  config.tasks = tuple(
    mnist_to_uci.task(
      "mnist5k", classes=(2 * k, 2 * k + 1), name=f"digits_{2 * k}{2 * k + 1}"
    )
    for k in range(5)
  )
  config.methods = (
    "lwf",
    "fine_tuning",
    "feature_extraction",
    "joint",
    "lfl",
    "l2_soft",
  )
  config.seeds = (0, 1, 2)
  config.reference = True
  config.batch_size = 128
  config.optimizer = "adam"
  config.weight_decay = 0.0
  config.first_task = ml_collections.ConfigDict(
    {"num_epochs": 40, "learning_rate": 1e-3}
  )
  config.warmup = ml_collections.ConfigDict({"num_epochs": 5, "learning_rate": 1e-3})
  config.train = ml_collections.ConfigDict({"num_epochs": 40, "learning_rate": 1e-3})
  config.published = ml_collections.ConfigDict(
    {
      "source": "van de Ven & Tolias (2019), Split MNIST: the same network, "
      "optimizer and batch size, but full MNIST, 2,000 iterations per task and no "
      "warm-up; their Class-IL networks are trained with one softmax over all "
      "classes seen so far, ours with one head per task whose logits are compared "
      "only at test time.",
      # Shown only while the config keeps these settings.
      "setting": {"model": "mlp", "optimizer": "adam", "batch_size": 128},
      "task_il": {"lwf": 99.60, "fine_tuning": 85.15, "joint": 99.64},
      "class_il": {"lwf": 24.17},
    }
  )
  return config
