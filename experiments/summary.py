"""Runs every shipped offline experiment and writes one README-ready summary.

``python -m experiments.summary --workdir=workdir`` runs each config of
:data:`EXPERIMENTS` into ``<workdir>/<name>`` and writes ``<workdir>/SUMMARY.md``:
each experiment's tables, its command and its wall time. With ``--reuse``, an
experiment whose ``results.json`` already holds the same config is not run again.
"""

import importlib
import json
import os
import sys

from absl import app, flags, logging

from experiments import continual, report

EXPERIMENTS = (
  "mnist_to_uci",
  "uci_to_mnist",
  "mnist_to_permuted",
  "lwf_variants",
  "lambda_sweep",
  "split_mnist",
  "permuted_mnist",
  "mixed_sequence",
)

_WORKDIR = flags.DEFINE_string("workdir", "workdir", "Parent directory of the runs.")
_REUSE = flags.DEFINE_bool("reuse", False, "Keep results whose config is unchanged.")
_ONLY = flags.DEFINE_list("only", [], "Run only these experiments.")


def load_config(name: str):
  return importlib.import_module(f"experiments.configs.{name}").get_config()


def reusable(path: str, config) -> dict | None:
  """The results at ``path`` if they were produced by ``config``, else None."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as file:
      results = json.load(file)
  except (OSError, ValueError):  # unreadable or not JSON: run again
    return None
  if not isinstance(results, dict):
    return None
  same = results.get("config") == json.loads(json.dumps(config.to_dict()))
  return results if same else None


def summarize(workdir: str, names, *, reuse: bool) -> str:
  """Runs (or reuses) each experiment; returns and writes the summary."""
  parts = [
    "# Results of the offline experiments",
    "",
    f"Written by `python -m experiments.summary --workdir={workdir}`.",
    "",
  ]
  for name in names:
    config = load_config(name)
    run_dir = os.path.join(workdir, name)
    results = reuse and reusable(os.path.join(run_dir, "results.json"), config)
    if not results:
      results = continual.run(config, run_dir)
    parts += [
      report.markdown(results),
      f"Command: `python -m experiments.main --config=experiments/configs/{name}.py "
      f"--workdir={run_dir}`",
      "",
    ]
  text = "\n".join(parts)
  report.write_text(os.path.join(workdir, "SUMMARY.md"), text)
  return text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  unknown = sorted(set(_ONLY.value) - set(EXPERIMENTS))
  if unknown:
    sys.exit(f"error: unknown experiments {unknown}; valid: {', '.join(EXPERIMENTS)}")
  names = [n for n in EXPERIMENTS if not _ONLY.value or n in _ONLY.value]
  try:
    summarize(_WORKDIR.value, names, reuse=_REUSE.value)
  except (ValueError, OSError, FloatingPointError) as error:
    sys.exit(f"error: {error}")
  print(f"Wrote {os.path.join(_WORKDIR.value, 'SUMMARY.md')}")


if __name__ == "__main__":
  app.run(main)
