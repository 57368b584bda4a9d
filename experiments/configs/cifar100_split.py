r"""CIFAR-100 in ten tasks of ten classes (TFDS ``cifar100``), a ResNet-32.

The task-incremental CIFAR-100 sequence of the continual-learning literature: the
classes in their label order, ten per task, one head each. Training pads by 4
pixels, crops 32x32 at random and mirrors; every task is normalised with the
first task's mean pixel.

Prepare ``cifar100`` first (README, "Data sets from the TFDS catalog"), then:
  python -m experiments.main --config=experiments/configs/cifar100_split.py \
      --workdir=workdir/cifar100_split

Runtime: not measured (needs the prepared data set and an accelerator).
"""

from experiments.configs import mnist_to_uci

NUM_TASKS = 10


def get_config():
  config = mnist_to_uci.get_config()
  config.name = "cifar100_split"
  config.seeds = (0, 1, 2)
  config.model = "resnet32"
  per_task = 100 // NUM_TASKS
  config.tasks = tuple(
    mnist_to_uci.task(
      "cifar100",
      name=f"cifar100_{k}",
      classes=tuple(range(k * per_task, (k + 1) * per_task)),
      image_size=32,
      data_dir="",
    )
    for k in range(NUM_TASKS)
  )
  config.methods = ("lwf", "fine_tuning", "feature_extraction", "joint")
  config.batch_size = 128
  config.inference_batch_size = 1000
  config.augment.pad = 4
  config.augment.flip = True
  config.subtract_mean = True
  config.first_task.num_epochs = 60
  config.first_task.learning_rate = 0.1
  config.warmup.num_epochs = 5
  config.warmup.learning_rate = 0.1
  config.train.num_epochs = 60
  config.train.learning_rate = 0.01
  return config
