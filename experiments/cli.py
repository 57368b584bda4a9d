r"""The lwf-jax command: runs an experiment, lists what there is, redraws a report.

Usage: lwf-jax COMMAND [flags]

Commands:
  run --config=FILE --workdir=DIR [--config.FIELD=VALUE ...]
      Runs the experiment of a config file (one of experiments/configs/*.py) into
      DIR, as python -m experiments.main does, and prints its tables.
  list
      Lists the shipped experiments, data sets, methods and models.
  report --workdir=DIR
      Writes DIR/results.md and the plots again from DIR/results.json, and prints
      the tables.

Example:
  lwf-jax run --config=experiments/configs/mnist_to_uci.py \
      --workdir=workdir/mnist_to_uci --config.lwf.temperature=3

A multi-process run takes --coordinator_address, --num_processes and
--process_id, or --distributed, as python -m experiments.main does.
"""

import importlib
import os
import pkgutil
import sys
import tempfile

import ml_collections
from absl import app, flags

from experiments import configs, report
from lwf_jax import datasets, methods, trunks

# experiments.main defines the flags (--config, --workdir, ...) when imported. It is
# imported where a command line is run, not here, so that importing this module
# defines no flags: experiments.summary defines a --workdir of its own.


def shipped_experiments() -> dict[str, str]:
  """``{name: summary}`` of the config modules in ``experiments/configs``."""
  names = [module.name for module in pkgutil.iter_modules(configs.__path__)]
  return {name: _summary(f"{configs.__name__}.{name}") for name in names}


def _summary(module_name: str) -> str:
  """The first paragraph of a module's docstring, on one line."""
  doc = importlib.import_module(module_name).__doc__ or ""
  return " ".join(doc.strip().split("\n\n")[0].replace("``", "").split())


def _section(title: str, rows: dict[str, str]) -> str:
  """A heading over ``name  text`` rows, the texts aligned."""
  width = max(map(len, rows))
  lines = [f"  {name:<{width}}  {text}".rstrip() for name, text in rows.items()]
  return "\n".join([title, *lines])


def listing() -> str:
  """The shipped experiments, data sets, methods and models, as plain text."""
  offline = "offline: ships inside an installed package"
  prepared = "needs prepared files (TFDS or an image folder; see the README)"
  return "\n\n".join(
    [
      _section("Experiments (experiments/configs/NAME.py):", shipped_experiments()),
      _section(
        "Data sets:",
        {n: offline if n in datasets.DATASETS else prepared for n in datasets.names()},
      ),
      _section(
        "Methods:", {name: m.description for name, m in methods.METHODS.items()}
      ),
      _section("Models:", dict.fromkeys(trunks.TRUNKS, "")),
    ]
  )


def rewrite_report(workdir: str) -> str:
  """Writes ``results.md`` and the plots again from ``results.json``; returns the
  Markdown.

  Raises ``ValueError``, naming the file, where ``results.json`` cannot be read or
  does not hold an experiment's results; ``workdir`` is then as it was, because
  everything is drawn in a temporary folder before any file is replaced.
  """
  path = os.path.join(workdir, "results.json")
  try:
    results = report.read_json(path)
  except OSError as error:
    raise ValueError(f"cannot read {path}: {error.strerror or error}") from error
  except ValueError as error:  # not JSON, or not UTF-8
    raise ValueError(f"{path} is not valid JSON: {error}") from error
  with tempfile.TemporaryDirectory(prefix=".report-", dir=workdir) as staging:
    try:
      text = report.write_all(results, staging)
    except (LookupError, TypeError, ValueError, AttributeError) as error:
      raise ValueError(
        f"{path} does not hold an experiment's results: {type(error).__name__}: {error}"
      ) from error
    for name in os.listdir(staging):
      if name != "results.json":  # the file read, left untouched
        os.replace(os.path.join(staging, name), os.path.join(workdir, name))
  return text


def run_command(config: ml_collections.ConfigDict, workdir: str) -> None:
  """``lwf-jax run``: what ``python -m experiments.main`` does."""
  from experiments import main as experiment_main

  experiment_main.run(config, workdir)


def list_command() -> None:
  """``lwf-jax list``."""
  print(listing())


def report_command(workdir: str) -> None:
  """``lwf-jax report``: the tables printed, or one line of error."""
  try:
    text = rewrite_report(workdir)
  except (ValueError, OSError) as error:
    sys.exit("error: " + " ".join(str(error).split()))  # one line
  print(text)


# Each command's function and the flags it needs, passed as its arguments.
COMMANDS = {
  "run": (run_command, ("config", "workdir")),
  "list": (list_command, ()),
  "report": (report_command, ("workdir",)),
}


def main(argv: list[str]) -> None:
  """Runs the command named by the first argument."""
  command, *extra = argv[1:] or [""]
  if command not in COMMANDS:
    valid = ", ".join(COMMANDS)
    raise app.UsageError(
      f"unknown command {command!r}; valid commands: {valid}"
      if command
      else f"no command given; valid commands: {valid}"
    )
  if extra:
    raise app.UsageError(f"unexpected arguments: {extra}")
  function, required = COMMANDS[command]
  values = {name: flags.FLAGS[name].value for name in required}
  missing = [f"--{name}" for name, value in values.items() if value is None]
  if missing:
    raise app.UsageError(f"{command} needs {' and '.join(missing)}")
  function(**values)


def run_cli() -> None:
  """The ``lwf-jax`` console script."""
  from experiments import main as experiment_main  # defines the flags

  # absl's usage text is the main module's docstring; a console script has none.
  sys.modules["__main__"].__doc__ = __doc__
  app.run(main, flags_parser=experiment_main.parse_flags)


if __name__ == "__main__":
  run_cli()
