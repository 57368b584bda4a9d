"""A plain PyTorch LwF train loop, the reference the benchmark compares against.

The same networks as ``lwf_jax.trunks`` ("mlp" and "cnn", one linear head per
task), the same objective (new-task cross-entropy plus the T-scaled soft
cross-entropy to the recorded old-head logits) and optimizer, written as PyTorch
continual-learning code usually is: an eager loop over shuffled mini-batches.
Optional: needs ``torch`` (see the README); nothing else imports this module.
"""

import time

import numpy as np
import torch
from torch import nn

from lwf_jax import trunks


def make_trunk(model: str, image_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
  """``(trunk, num_features)``: lwf_jax's trunk ``model`` (an MLP or the small
  CNN, read from its settings) as PyTorch layers."""
  height, width, channels = image_shape
  flax_trunk = trunks.make_trunk(model)
  if isinstance(flax_trunk, trunks.MLPTrunk):
    layers, width_in = [nn.Flatten()], height * width * channels
    for i, size in enumerate(flax_trunk.hidden_sizes):
      if i > 0:
        layers.append(nn.Dropout(flax_trunk.dropout_rate))
      layers += [nn.Linear(width_in, size), nn.ReLU()]
      width_in = size
  elif isinstance(flax_trunk, trunks.CNNTrunk):
    layers, width_in = [], channels
    for features in flax_trunk.conv_features:
      layers += [nn.Conv2d(width_in, features, 3, padding=1), nn.ReLU()]
      layers.append(nn.MaxPool2d(2))
      width_in, height, width = features, height // 2, width // 2
    layers.append(nn.Flatten())
    width_in *= height * width
    for i, size in enumerate(flax_trunk.dense_features):
      if i > 0:
        layers.append(nn.Dropout(flax_trunk.dropout_rate))
      layers += [nn.Linear(width_in, size), nn.ReLU()]
      width_in = size
  else:
    raise ValueError(f"no PyTorch version of model {model!r}: MLPs and CNNs only")
  # The network's dropout on the way to the heads.
  layers.append(nn.Dropout(flax_trunk.dropout_rate))
  return nn.Sequential(*layers), width_in


class MultiHead(nn.Module):
  def __init__(self, trunk: nn.Module, num_features: int, heads: dict[str, int]):
    super().__init__()
    self.trunk = trunk
    self.heads = nn.ModuleDict(
      {h: nn.Linear(num_features, n) for h, n in heads.items()}
    )

  def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
    features = self.trunk(images)
    return {name: head(features) for name, head in self.heads.items()}


def lwf_loss(
  logits: dict[str, torch.Tensor],
  *,
  labels: torch.Tensor,
  recorded: dict[str, torch.Tensor],
  new: str,
  temperature: float,
  lambda_old: float,
) -> torch.Tensor:
  loss = nn.functional.cross_entropy(logits[new], labels)
  for head, targets in recorded.items():
    soft = torch.softmax(targets / temperature, -1)
    log_probs = torch.log_softmax(logits[head] / temperature, -1)
    loss = loss - lambda_old * (soft * log_probs).sum(-1).mean()
  return loss


def time_steps(
  *,
  model: str,
  images: np.ndarray,
  labels: np.ndarray,
  recorded: dict[str, np.ndarray],
  num_classes: int,
  batch_size: int,
  optimizer: str,
  learning_rate: float,
  weight_decay: float,
  steps: int,
  repeats: int,
  threads: int,
  temperature: float = 2.0,
  lambda_old: float = 1.0,
) -> list[float]:
  """Seconds of each of ``repeats`` timed runs of ``steps`` LwF steps, after one
  untimed warm-up run; ``images`` are ``[n, h, w, c]`` as lwf_jax stores them."""
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  trunk, num_features = make_trunk(model, images.shape[1:])
  heads = {h: r.shape[1] for h, r in recorded.items()} | {"new": num_classes}
  net = MultiHead(trunk, num_features, heads)
  if optimizer == "adam":
    opt = torch.optim.Adam(net.parameters(), learning_rate, weight_decay=weight_decay)
  else:
    opt = torch.optim.SGD(
      net.parameters(), learning_rate, momentum=0.9, weight_decay=weight_decay
    )
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  y = torch.from_numpy(labels.astype(np.int64))
  old = {h: torch.from_numpy(r) for h, r in recorded.items()}
  net.train()

  def run():
    order = torch.cat(
      [torch.randperm(len(y)) for _ in range(-(-steps * batch_size // len(y)))]
    )
    for step in range(steps):
      rows = order[step * batch_size : (step + 1) * batch_size]
      logits = net(x[rows])
      loss = lwf_loss(
        logits,
        labels=y[rows],
        recorded={h: r[rows] for h, r in old.items()},
        new="new",
        temperature=temperature,
        lambda_old=lambda_old,
      )
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    return loss.item()

  run()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return times
