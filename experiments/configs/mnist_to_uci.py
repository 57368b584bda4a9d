r"""Table 1 on offline data: add UCI digits (new task) to an MNIST network (old task).

The default config; every other config imports it and overrides the differences.

Run:
  python -m experiments.main --config=experiments/configs/mnist_to_uci.py \
      --workdir=workdir/mnist_to_uci

Runtime: 2.5 minutes on 2 CPU cores. Result (test accuracy %, LwF absolute, the
others as differences from LwF): LwF 96.10 ± 0.10 old, 98.45 ± 0.14 new;
fine-tuning -2.25 / +0.28; feature extraction +1.45 / -9.58; joint +1.75 / -0.28.
"""

import ml_collections


def task(dataset: str, **kwargs) -> dict:
  """A task of a data set (see ``lwf_jax.datasets.load_task``).

  Keys: ``dataset``; optional ``name`` (default: the data set's name),
  ``classes`` (original labels to keep, in head order; default: all),
  ``max_train_per_class`` (> 0 keeps that many training images per class),
  ``permutation_seed`` (permute the pixels, as in Permuted MNIST; offline data
  sets); ``image_size`` (required), ``channels`` and ``data_dir`` (TFDS catalog
  data sets and image folders; ``""``: the TFDS default).
  """
  return {"dataset": dataset, **kwargs}


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "mnist_to_uci"  # the experiment's name in reports
  config.seeds = (0, 1)  # one run per seed; reports give mean and std over seeds
  # "on": train the seeds as one vmapped program (variables with a seed axis);
  # "off": one after another; "auto": on with several seeds on an accelerator.
  config.vmap_seeds = "auto"
  config.model = "cnn"  # trunk, a key of lwf_jax.trunks.TRUNKS
  # The tasks, in order; the first one is learned from scratch.
  config.tasks = (task("mnist5k"), task("uci_digits"))
  # Methods to compare, keys of lwf_jax.methods.METHODS.
  config.methods = ("lwf", "fine_tuning", "feature_extraction", "joint")
  # If set, every distilling method runs once per lambda_old value listed.
  config.lambda_old_sweep = ()
  # Also train each task alone from scratch, the reference for forward transfer.
  config.reference = False

  config.batch_size = 64  # examples per task per step
  config.inference_batch_size = 500  # examples per pass when recording / evaluating
  # Training metrics go to <workdir>/logs every this many steps (0: once an epoch).
  config.log_every_steps = 20
  # Checkpoint each run after every task and at the end of each epoch in which a
  # multiple of this many steps falls (0: after every task only); a run started
  # again in the same work directory resumes from its latest checkpoint.
  config.checkpoint_every_steps = 500
  # Local devices to split every batch over (data parallelism); 0: all that JAX
  # sees, so the same command runs on a CPU, 8 GPUs or a TPU host.
  config.num_devices = 0
  # "bfloat16": mixed precision on accelerators (layers compute in bfloat16;
  # parameters, BatchNorm statistics and losses stay float32).
  config.compute_dtype = "float32"
  # Training-time augmentation (lwf_jax.augment): crop_size is the network's input
  # when smaller than the stored images (random crops in training, the centre
  # view when recording and evaluating); pad, zero pixels around before cropping;
  # flip, random mirroring.
  config.augment = ml_collections.ConfigDict({"crop_size": 0, "pad": 0, "flip": False})
  # Subtract the first task's mean pixel from every task's images (the paper's
  # networks normalise the new task with the old task's mean).
  config.subtract_mean = False
  config.optimizer = "sgd"  # "sgd" (the paper's) or "adam"
  config.momentum = 0.9  # SGD momentum (the paper's)
  config.weight_decay = 5e-4  # L2 coefficient (the paper's)
  # Stages, each with a fresh optimizer: the first task from scratch, then for
  # each new task the warm-up (new head only) and the method's training.
  config.first_task = ml_collections.ConfigDict(
    {"num_epochs": 10, "learning_rate": 0.05}
  )
  config.warmup = ml_collections.ConfigDict({"num_epochs": 5, "learning_rate": 0.1})
  config.train = ml_collections.ConfigDict({"num_epochs": 20, "learning_rate": 0.02})
  # LwF's objective: L_new + lambda_old * sum over old heads of L_old at temperature.
  config.lwf = ml_collections.ConfigDict(
    {"lambda_old": 1.0, "temperature": 2.0, "scale_by_temperature_squared": False}
  )
  # LFL's weight on the squared distance of the shared features to the recorded ones.
  config.lfl = ml_collections.ConfigDict({"lambda_features": 0.1})
  # The L2 soft constraint's weight on the trunk's squared distance to the old trunk.
  config.l2_soft = ml_collections.ConfigDict({"lambda_weights": 0.01})
  # Published numbers to print beside ours: {"source": str, "setting": {config
  # field: value}, "task_il": {method: accuracy %}, "class_il": {...}}; shown only
  # while the config's fields equal "setting"'s; empty when none match.
  config.published = ml_collections.ConfigDict()
  return config
