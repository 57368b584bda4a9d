"""The benchmark runs and reports every figure."""

import json
import subprocess
import sys

from experiments import benchmark
from tests.test_experiments import ROOT


def test_benchmark_writes_every_figure(tmp_path):
  output = tmp_path / "benchmark.json"
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.benchmark",
      "--workloads=mlp_tiny",
      "--repeats=2",
      "--min_steps=10",
      "--seeds=2",
      "--torch=false",
      f"--output={output}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert done.returncode == 0, done.stderr
  results = json.loads(output.read_text())
  figures = results["workloads"]["mlp_tiny"]
  assert figures["default_path"] == "scan"  # an MLP on a CPU
  for path in ("scan", "loop", "online", "seeds_vmapped", "seeds_sequential"):
    assert figures[path]["examples_per_s"] > 0, path
    assert len(figures[path]["seconds"]) == 2
  assert figures["scan"]["compile_s"] > 0 and figures["loop"]["compile_s"] > 0
  assert 0 < figures["fraction_of_matmul_peak"] < 2
  assert figures["step_gflop"] > 0 and figures["peak_rss_mib"] > 0
  assert set(figures["ratios"]) == {
    "recorded_over_online",
    "scan_over_loop",
    "vmapped_over_sequential_seeds",
  }
  assert "| mlp_tiny | LwF, online teacher |" in done.stdout
  assert "epochs as one scan (default) |" in done.stdout


def test_unknown_workload_is_refused():
  done = subprocess.run(
    [sys.executable, "-m", "experiments.benchmark", "--workloads=gpt"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert done.returncode != 0
  assert (
    done.stderr.strip()
    .splitlines()[-1]
    .startswith("error: unknown workloads ['gpt']; valid: mlp_b64")
  )
  assert "--min_steps" not in done.stderr  # one line, not the flags' help


def test_step_flops_grow_with_the_batch():
  model, variables, data, _ = benchmark.setup(benchmark.WORKLOADS["mlp_tiny"])
  state = benchmark.new_state(benchmark.WORKLOADS["mlp_tiny"], variables)
  objective = benchmark.train.Objective()
  small, large = (
    benchmark.step_flops(model, objective, state, data, None, batch_size=b)
    for b in (16, 32)
  )
  # An MLP's step is matmuls: twice the examples, about twice the FLOPs.
  assert 1.8 < large / small < 2.2
