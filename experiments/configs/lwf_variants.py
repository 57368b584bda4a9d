r"""LwF's variants on mnist_to_uci: warm-up or not (paper Table 2b), online teacher,
T^2 scaling, beside fine-tuning.

Run:
  python -m experiments.main --config=experiments/configs/lwf_variants.py \
      --workdir=workdir/lwf_variants
"""

from experiments.configs import mnist_to_uci


def get_config():
  config = mnist_to_uci.get_config()
  config.name = "lwf_variants"
  config.methods = ("lwf", "lwf_no_warmup", "lwf_online", "lwf_t2", "fine_tuning")
  return config
