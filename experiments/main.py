"""Runs an experiment: ``python -m experiments.main --config=... --workdir=...``."""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import single_task

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints and results."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  try:
    single_task.run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileExistsError) as error:
    sys.exit(f"error: {error}")


if __name__ == "__main__":
  app.run(main)
