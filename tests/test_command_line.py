"""The command line: one clear line for bad settings and failures, checkpoints kept."""

import json
import os
import re
import subprocess
import sys

from lwf_jax import resume

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_CONFIG = "experiments/configs/mnist_to_uci_smoke.py"


def run_main(*args):
  return subprocess.run(
    [sys.executable, "-m", "experiments.main", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )


def test_bad_config_on_the_command_line_is_one_clear_line(tmp_path):
  # A setting refused by the run, and the flag parser's errors (the run's other
  # refusals are tested through continual.run above).
  for override, message in [
    ("--config.lwf.temperature=0", "error: temperature must be finite and > 0"),
    ("--config.nonexistent=1", "error: the config has no field 'nonexistent'"),
    (f"--config={SMOKE_CONFIG}:extra", "get_config() takes 0 positional arguments"),
    ("--config=experiments/configs/nothing.py", "No such file or directory"),
  ]:
    workdir = tmp_path / "bad"
    done = run_main(f"--config={SMOKE_CONFIG}", f"--workdir={workdir}", override)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not workdir.exists()


def test_unwritable_workdir_is_one_clear_line(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  done = run_main(f"--config={SMOKE_CONFIG}", f"--workdir={blocker / 'sub'}")
  assert done.returncode != 0 and "Traceback" not in done.stderr
  assert "error: cannot write to the work directory" in done.stderr


def test_divergence_stops_cleanly_and_keeps_finished_runs(tmp_path):
  workdir = tmp_path / "diverge"
  done = run_main(
    f"--config={SMOKE_CONFIG}",
    f"--workdir={workdir}",
    "--config.methods=('fine_tuning','lwf')",
    "--config.lwf.lambda_old=1e38",
    "--config.checkpoint_every_steps=1",
  )
  assert done.returncode != 0 and "Traceback" not in done.stderr
  assert re.search(
    r"error: LwF \(ours\), seed 0 uci_digits: train: non-finite loss .* in epoch "
    r"\d+, step \d+",
    done.stderr,
  )
  # LwF's last good checkpoint, from before the divergence, is kept and readable.
  saved = resume.RunCheckpoints(
    str(workdir / "checkpoints" / "lwf_seed0"), {}, every_steps=0
  ).manager.latest_step()
  assert saved is not None
  with open(workdir / "results.partial.json") as file:
    partial = json.load(file)
  assert partial["methods"]["fine_tuning"]["seeds"]["0"]["task_il"][1][1] > 0.5
  assert not (workdir / "results.json").exists()
