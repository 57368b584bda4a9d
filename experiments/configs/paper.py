r"""The paper's single-new-task protocol (Table 1) on its own data sets, via TFDS.

An AlexNet (Caffe's reference model; fc6 and fc7 shared, fc8 per task) trained on
an old task, then a new task added with LwF and every baseline. The argument names
the pair, ``old,new``, from :data:`lwf_jax.catalog.CATALOG` (and ``mit_indoor67``,
an image folder): the paper's are ``imagenet`` or ``places365`` with ``voc``,
``cub``, ``mit_indoor67`` (its "Scenes") or ``mnist``.

Images are resized to 256x256 and stored as uint8; training takes random 227x227
crops and mirror images, recording and evaluation the centre crop; every task is
normalised with the old task's mean pixel. VOC is multi-label (sigmoid outputs,
mean average precision; as an old task, the binary form of the distillation loss).

The paper starts from a network trained on all of ImageNet or Places365. Here the
original network is trained on the old task's examples held in host memory, by
default the first 100 per class (``--config.tasks`` overrides it); the full data
sets need a streaming input pipeline, which lwf_jax does not have. Epochs and
learning rates are starting points, not the paper's tuned values.

Prepare the data first (README, "Data sets from the TFDS catalog"), then:
  python -m experiments.main --config=experiments/configs/paper.py:imagenet,cub \
      --workdir=workdir/imagenet_to_cub

Runtime: not measured (needs the prepared data sets and an accelerator).
"""

import ml_collections

from experiments.configs import mnist_to_uci

OLD_TASK_EXAMPLES_PER_CLASS = 100  # of the old task, held in host memory


def get_config(pair: str = "imagenet,cub") -> ml_collections.ConfigDict:
  old, new = pair.split(",")
  config = mnist_to_uci.get_config()
  config.name = f"{old}_to_{new}"
  config.seeds = (0,)
  config.model = "alexnet"
  config.tasks = (
    mnist_to_uci.task(
      old,
      image_size=256,
      channels=3,
      max_train_per_class=OLD_TASK_EXAMPLES_PER_CLASS,
      data_dir="",
    ),
    mnist_to_uci.task(new, image_size=256, channels=3, data_dir=""),
  )
  # The paper's Table 1 methods.
  config.methods = (
    "lwf",
    "fine_tuning",
    "fine_tuning_fc",
    "feature_extraction",
    "joint",
    "lfl",
  )
  config.batch_size = 64
  config.inference_batch_size = 256
  config.compute_dtype = "bfloat16"
  config.augment.crop_size = 227
  config.augment.flip = True
  config.subtract_mean = True
  config.first_task.num_epochs = 30
  config.first_task.learning_rate = 0.01
  config.warmup.num_epochs = 5
  config.warmup.learning_rate = 0.01
  config.train.num_epochs = 30
  config.train.learning_rate = 0.001
  return config
