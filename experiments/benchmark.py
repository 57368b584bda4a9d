r"""Training speed: ``python -m experiments.benchmark [--workloads=...]``.

For each workload (a network adding a new task with LwF, one old head recorded),
times training after a warm-up and prints, and writes as JSON:

- examples/s and step time (the median of ``--repeats`` timed runs of at least
  ``--min_steps`` steps), compile time apart, of LwF with recorded responses on
  both of lwf_jax's paths: the epoch as one compiled ``lax.scan`` over on-device
  data, and a Python loop over the compiled step; the path ``lwf_jax.train``
  takes by default is marked (:func:`lwf_jax.train.scans_fast`);
- achieved FLOP/s of the default path, from XLA's cost analysis of the compiled
  train step (the student's forward and backward passes, the loss and the
  optimizer update), as a fraction of this machine's float32 matmul FLOP/s
  measured in the same run;
- in the same run: the online teacher (the old network run on every batch);
  ``--seeds`` seeds as one vmapped program against as many runs one after
  another; and, when PyTorch is installed, a plain PyTorch LwF loop on the same
  data, network, batch size, optimizer and thread count, timed over the same
  number of steps (``experiments.torch_lwf``);
- the process's peak resident memory after each workload.

Example:
  python -m experiments.benchmark --workloads=mlp_b64,cnn \
      --output=workdir/benchmark/benchmark.json
"""

import dataclasses
import functools
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from lwf_jax import datasets, inference, models, tasks, train, trunks
from lwf_jax import seeds as seeds_lib


@dataclasses.dataclass(frozen=True)
class Workload:
  """A network learning a new task with LwF, one old head recorded."""

  model: str
  data: str  # 'split_mnist', 'mnist_to_uci' or 'synthetic_cifar'
  batch_size: int
  optimizer: str = "sgd"
  learning_rate: float = 0.01
  weight_decay: float = 5e-4
  compute_dtype: str = "float32"


WORKLOADS = {
  # The setting of PyTorch continual-learning libraries' Split MNIST: the
  # 784-400-400 MLP with 2-way heads, Adam.
  "mlp_b64": Workload("mlp", "split_mnist", 64, "adam", 1e-3, 0.0),
  "mlp_b128": Workload("mlp", "split_mnist", 128, "adam", 1e-3, 0.0),
  "cnn": Workload("cnn", "mnist_to_uci", 64),
  "resnet18": Workload("resnet18", "synthetic_cifar", 128),
  "resnet18_bf16": Workload(
    "resnet18", "synthetic_cifar", 128, compute_dtype="bfloat16"
  ),
  "mlp_tiny": Workload("mlp_tiny", "split_mnist", 32, "adam", 1e-3, 0.0),  # tests
}

_WORKLOADS = flags.DEFINE_list(
  "workloads", ["mlp_b64", "mlp_b128", "cnn", "resnet18"], "Workloads to time."
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs of each figure.")
_MIN_STEPS = flags.DEFINE_integer("min_steps", 200, "Train steps per timed run.")
_RESNET_STEPS = flags.DEFINE_integer(
  "resnet_steps", 4, "Train steps per timed run of the ResNet workloads."
)
_SEEDS = flags.DEFINE_integer("seeds", 4, "Seeds vmapped together (0: skip).")
_TORCH = flags.DEFINE_bool("torch", True, "Time PyTorch LwF too, when installed.")
_OUTPUT = flags.DEFINE_string(
  "output", "workdir/benchmark/benchmark.json", "JSON file for the figures."
)


def lwf_data(workload: Workload) -> tuple[tasks.Task, tasks.Task]:
  """``(old task, new task)`` of a workload."""
  if workload.data == "split_mnist":
    return (
      datasets.load_task("mnist5k", classes=(0, 1), name="old"),
      datasets.load_task("mnist5k", classes=(2, 3), name="new"),
    )
  if workload.data == "mnist_to_uci":
    return (
      datasets.load_task("mnist5k", name="old"),
      datasets.load_task("uci_digits", name="new"),
    )
  rng = np.random.default_rng(0)

  def synthetic(name):
    n = 16 * workload.batch_size
    split = {
      "image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
      "label": rng.integers(0, 10, n).astype(np.int32),
    }
    return tasks.make_task(name, range(10), split, split)

  return synthetic("old"), synthetic("new")


def setup(workload: Workload):
  """The network with an old and a new head, and the new task's LwF data."""
  old, new = lwf_data(workload)
  rng = jax.random.key(0)
  trunk = trunks.make_trunk(workload.model, workload.compute_dtype)
  model, variables = models.init_trunk(trunk, rng, old.image_shape)
  for i, task in enumerate((old, new)):
    spec = models.HeadSpec(task.name, task.num_classes)
    model, variables = models.add_head(
      model, variables, spec, jax.random.fold_in(rng, i)
    )
  recorded = inference.predict(model, variables, new.train["image"], batch_size=500)
  data = {"new": {**new.train, "recorded": {"old": recorded.logits["old"]}}}
  return model, variables, data, new


def new_state(workload: Workload, variables, seed: int = 0) -> train.TrainState:
  return train.create_train_state(
    variables,
    trainable=(".*",),
    learning_rate=workload.learning_rate,
    optimizer=workload.optimizer,
    weight_decay=workload.weight_decay,
    dropout_rng=jax.random.key(seed),
  )


def median_seconds(run: Callable[[], object], repeats: int) -> list[float]:
  """Seconds of each of ``repeats`` calls of ``run`` (blocked until done), after
  one untimed call."""
  jax.block_until_ready(run())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  return times


def matmul_flops_per_second(size: int = 2048, repeats: int = 10) -> float:
  """This machine's float32 matmul FLOP/s: ``[size, size] @ [size, size]``."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  seconds = statistics.median(median_seconds(lambda: matmul(a, a), repeats))
  return 2 * size**3 / seconds


def step_flops(model, objective, state, data, reference, *, batch_size: int) -> float:
  """XLA's FLOP count of one compiled train step on ``batch_size`` examples."""
  step = jax.jit(functools.partial(train.train_step, model=model, objective=objective))
  batch = jax.tree.map(lambda x: x[:batch_size], data)
  costs = step.lower(state, batch, reference).compile().cost_analysis()
  costs = costs[0] if isinstance(costs, list) else costs
  return float(costs.get("flops", math.nan))


def time_epochs(
  model, objective, state, data, reference, *, steps, batch_size, repeats, seeds=0
) -> dict:
  """Compile time and timed runs of ``steps`` steps as one scanned epoch."""
  sizes = {task: len(split["label"]) for task, split in data.items()}
  shuffle = functools.partial(
    train.epoch_indices, sizes=sizes, steps=steps, batch_size=batch_size
  )
  if seeds:
    indices = jax.vmap(shuffle)(jax.random.split(jax.random.key(1), seeds))
  else:
    indices = shuffle(jax.random.key(1))
  epoch = train.compiled_train_epoch(model, objective, seeds=bool(seeds))
  data = jax.device_put(data)
  start = time.perf_counter()
  compiled = epoch.lower(state, data, indices, reference).compile()
  compile_s = time.perf_counter() - start
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], data, indices, reference)
    return metrics

  return {"compile_s": compile_s, "times": median_seconds(run, repeats)}


def time_loop(
  model, objective, state, data, reference, *, steps, batch_size, repeats
) -> dict:
  """Compile time and timed runs of ``steps`` steps as a Python loop over the
  compiled step."""
  sizes = {task: len(split["label"]) for task, split in data.items()}
  indices = train.epoch_indices(
    jax.random.key(1), sizes, steps=steps, batch_size=batch_size
  )
  data = jax.device_put(data)
  step_fn = train.compiled_train_step(model, objective)
  start = time.perf_counter()
  compiled = step_fn.lower(state, train.take_batch(data, indices, 0), reference)
  compiled = compiled.compile()
  compile_s = time.perf_counter() - start
  holder = [state]

  def run():
    for step in range(steps):
      batch = train.take_batch(data, indices, step)
      holder[0], metrics = compiled(holder[0], batch, reference)
    return metrics

  return {"compile_s": compile_s, "times": median_seconds(run, repeats)}


def figures(run: dict, steps: int, batch_size: int, runs: int = 1) -> dict:
  """examples/s and step time from the median run; ``runs`` seeds at once."""
  seconds = statistics.median(run["times"])
  return {
    "examples_per_s": runs * steps * batch_size / seconds,
    "step_ms": 1e3 * seconds / steps,
    "seconds": run["times"],
    **({"compile_s": run["compile_s"]} if "compile_s" in run else {}),
  }


def bench_workload(name: str, peak: float) -> dict:
  """Every figure of one workload (see the module docstring)."""
  workload = WORKLOADS[name]
  model, variables, data, new = setup(workload)
  batch = workload.batch_size
  per_epoch = len(data["new"]["label"]) // batch
  resnet = workload.model.startswith("resnet")
  steps = _RESNET_STEPS.value if resnet else max(per_epoch, _MIN_STEPS.value)
  default = "scan" if train.scans_fast(model) else "loop"
  timers = {"scan": time_epochs, "loop": time_loop}
  settings = {"steps": steps, "batch_size": batch, "repeats": _REPEATS.value}
  recorded = train.Objective()
  teacher_data = {"new": {k: v for k, v in data["new"].items() if k != "recorded"}}
  result = {
    "workload": dataclasses.asdict(workload),
    "steps": steps,
    "batch": batch,
    "default_path": default,
  }
  print(f"{name}: {steps} steps of {batch} examples per timed run", flush=True)

  def record(path, run, runs=1):
    result[path] = figures(run, steps, batch, runs)
    speed = result[path]["examples_per_s"]
    print(f"  {name}, {PATHS[path]}: {speed:,.0f} examples/s", flush=True)

  state = functools.partial(new_state, workload, variables)
  # The default path first; the other path is skipped for the ResNets (slow here).
  for path in (
    (default,) if resnet else (default, {"scan": "loop"}.get(default, "scan"))
  ):
    record(path, timers[path](model, recorded, state(), data, None, **settings))
  online = train.Objective(online_heads=("old",))
  record(
    "online",
    timers[default](model, online, state(), teacher_data, variables, **settings),
  )
  flops = step_flops(model, recorded, state(), data, None, batch_size=batch)
  achieved = flops / (result[default]["step_ms"] / 1e3)
  result["step_gflop"] = flops / 1e9
  result["gflop_per_s"] = achieved / 1e9
  result["fraction_of_matmul_peak"] = achieved / peak
  seeds = _SEEDS.value
  # Seeds vmapped need scanned epochs: timed where they are the default path.
  if seeds and default == "scan":
    stacked = seeds_lib.stack([state(s) for s in range(seeds)])
    # Each seed its own recordings (here all the same network's).
    recordings = seeds_lib.stack([data["new"]["recorded"]] * seeds)
    seed_data = {"new": {**data["new"], "recorded": recordings}}
    record(
      "seeds_vmapped",
      time_epochs(model, recorded, stacked, seed_data, None, seeds=seeds, **settings),
      seeds,
    )
    runs = [
      time_epochs(model, recorded, state(s), data, None, **settings)
      for s in range(seeds)
    ]
    per_repeat = [sum(t) for t in zip(*(r["times"] for r in runs), strict=True)]
    record("seeds_sequential", {"times": per_repeat}, seeds)
  if _TORCH.value and not resnet and _torch_available():
    from experiments import torch_lwf

    times = torch_lwf.time_steps(
      model=workload.model,
      images=np.asarray(data["new"]["image"], np.float32),
      labels=np.asarray(data["new"]["label"]),
      recorded={"old": np.asarray(data["new"]["recorded"]["old"])},
      num_classes=new.num_classes,
      batch_size=batch,
      optimizer=workload.optimizer,
      learning_rate=workload.learning_rate,
      weight_decay=workload.weight_decay,
      steps=steps,
      repeats=_REPEATS.value,
      threads=threads(),
    )
    record("torch", {"times": times})
  result["ratios"] = ratios(result)
  result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return result


def ratios(result: dict) -> dict:
  """Throughput ratios: lwf_jax's default path (recorded responses) over each
  alternative, and vmapped over sequential seeds."""
  ours = result[result["default_path"]]["examples_per_s"]
  out = {"recorded_over_online": ours / result["online"]["examples_per_s"]}
  if "scan" in result and "loop" in result:
    out["scan_over_loop"] = (
      result["scan"]["examples_per_s"] / result["loop"]["examples_per_s"]
    )
  if "seeds_vmapped" in result:
    out["vmapped_over_sequential_seeds"] = (
      result["seeds_vmapped"]["examples_per_s"]
      / result["seeds_sequential"]["examples_per_s"]
    )
  if "torch" in result:
    out["jax_over_torch"] = ours / result["torch"]["examples_per_s"]
  return out


def _torch_available() -> bool:
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def threads() -> int:
  """The processors this process may run on (XLA's CPU thread pool uses them all)."""
  return len(os.sched_getaffinity(0))


def machine() -> dict:
  device = jax.devices()[0]
  return {
    "device": f"{device.platform}: {device.device_kind}",
    "num_devices": jax.device_count(),
    "threads": threads(),
    "processor": platform.processor() or platform.machine(),
    "jax": jax.__version__,
    "date": time.strftime("%Y-%m-%d"),
  }


def table(results: dict) -> str:
  """The figures as Markdown tables."""
  rows = [
    "| workload | path | examples/s | step (ms) | compile (s) | vs default |",
    "|---|---|---:|---:|---:|---:|",
  ]
  for name, result in results["workloads"].items():
    ours = result[result["default_path"]]["examples_per_s"]
    for path, label in PATHS.items():
      if path not in result:
        continue
      entry = result[path]
      default = " (default)" if path == result["default_path"] else ""
      compile_s = f"{entry['compile_s']:.1f}" if "compile_s" in entry else ""
      rows.append(
        f"| {name} | {label}{default} | {entry['examples_per_s']:,.0f} | "
        f"{entry['step_ms']:.2f} | {compile_s} | {entry['examples_per_s'] / ours:.2f} |"
      )
  rows += [
    "",
    "| workload | step GFLOP (XLA) | GFLOP/s | of matmul peak | peak memory (MiB) |",
    "|---|---:|---:|---:|---:|",
  ]
  for name, r in results["workloads"].items():
    rows.append(
      f"| {name} | {r['step_gflop']:.3f} | {r['gflop_per_s']:.1f} | "
      f"{100 * r['fraction_of_matmul_peak']:.0f}% | {r['peak_rss_mib']:,.0f} |"
    )
  machine = ", ".join(f"{k} {v}" for k, v in results["machine"].items())
  rows.append(
    f"\nfloat32 matmul: {results['matmul_gflop_per_s']:.1f} GFLOP/s; {machine}"
  )
  return "\n".join(rows)


PATHS = {
  "scan": "LwF, recorded responses, epochs as one scan",
  "loop": "LwF, recorded responses, Python loop over compiled steps",
  "online": "LwF, online teacher",
  "seeds_vmapped": "seeds vmapped, all seeds' examples (scan)",
  "seeds_sequential": "seeds one after another (scan)",
  "torch": "plain PyTorch LwF",
}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  unknown = [w for w in _WORKLOADS.value if w not in WORKLOADS]
  if unknown:
    sys.exit(f"error: unknown workloads {unknown}; valid: {', '.join(WORKLOADS)}")
  if _REPEATS.value < 1 or _MIN_STEPS.value < 1 or _RESNET_STEPS.value < 1:
    sys.exit("error: --repeats, --min_steps and --resnet_steps must be >= 1")
  peak = matmul_flops_per_second()
  results = {
    "machine": machine(),
    "matmul_gflop_per_s": peak / 1e9,
    "workloads": {name: bench_workload(name, peak) for name in _WORKLOADS.value},
  }
  os.makedirs(os.path.dirname(_OUTPUT.value) or ".", exist_ok=True)
  with open(_OUTPUT.value + ".tmp", "w") as f:
    json.dump(results, f, indent=2)
  os.replace(_OUTPUT.value + ".tmp", _OUTPUT.value)
  print(table(results))


if __name__ == "__main__":
  app.run(main)
