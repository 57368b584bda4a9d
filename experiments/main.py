"""Runs an experiment: ``python -m experiments.main --config=... --workdir=...``
(or ``lwf-jax run ...``, which shares these flags: see :mod:`experiments.cli`).

On several hosts, start the same command in every process with
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (or
``--distributed`` where JAX finds them itself: Cloud TPU, SLURM, Open MPI).
"""

import sys

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import continual

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints and results."
)
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed", False, "Join a multi-process run whose settings JAX detects."
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "HOST:PORT of process 0, for a multi-process run."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def initialize_distributed() -> None:
  """``jax.distributed.initialize`` when the flags ask for several processes."""
  if _COORDINATOR.value:
    jax.distributed.initialize(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    )
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with an override of a missing config field as one line."""
  try:
    return flags.FLAGS(argv)
  except AttributeError as error:  # ml_collections: the config has no such field
    sys.exit(f"error: the config has no field {str(error).strip(chr(34) + chr(39))!r}")
  except flags.Error as error:
    # A config file that fails to load comes with its traceback: keep its first
    # line (which flag) and its last (what went wrong).
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    sys.exit(f"error: {lines[0]} {lines[-1]}" if len(lines) > 1 else f"error: {error}")


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Runs an experiment as the command line does: warnings-only logs unless
  ``--verbosity`` is given, the result tables printed, an error as one line."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  try:
    initialize_distributed()
    results = continual.run(config, workdir)
  except (ValueError, OSError, FloatingPointError) as error:
    sys.exit("error: " + " ".join(str(error).split()))  # one line
  if jax.process_index() == 0:
    print(results["markdown"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  # Required here, not on import: ``lwf-jax list`` shares these flags without them.
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=parse_flags)
