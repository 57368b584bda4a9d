r"""LwF's lambda_o swept on mnist_to_uci: the old/new-task trade-off (paper Fig. 7).

Run:
  python -m experiments.main --config=experiments/configs/lambda_sweep.py \
      --workdir=workdir/lambda_sweep
"""

from experiments.configs import mnist_to_uci


def get_config():
  config = mnist_to_uci.get_config()
  config.name = "lambda_sweep"
  config.methods = ("lwf",)
  config.lambda_old_sweep = (0.1, 0.3, 1.0, 3.0, 10.0)
  return config
