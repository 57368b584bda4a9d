"""Networks on disk: variables and JSON metadata in one orbax checkpoint.

Orbax writes into a temporary directory and renames it when complete, so a
checkpoint directory either holds a whole checkpoint or does not exist; arrays are
stored with TensorStore and metadata as JSON, so loading never executes code.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from lwf_jax import models


def save(directory: str, variables: models.Variables, metadata: dict[str, Any]) -> None:
  """Writes ``variables`` and JSON-serialisable ``metadata`` to a new ``directory``."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory):
    raise FileExistsError(f"refusing to overwrite the checkpoint at {directory}")
  # Host arrays: on several processes, device arrays from a pmapped program are
  # process-local, which orbax cannot write; every process holds the same values.
  variables = jax.device_get(variables)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(
      directory,
      ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        metadata=ocp.args.JsonSave(metadata),
      ),
    )


def _restore(directory: str, **items: ocp.args.CheckpointArgs) -> dict[str, Any]:
  directory = os.path.abspath(directory)
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
      return checkpointer.restore(directory, ocp.args.Composite(**items))
  except Exception as error:
    raise ValueError(f"cannot read the checkpoint at {directory}: {error}") from error


def load(directory: str) -> tuple[models.Variables, dict[str, Any]]:
  """Reads ``(variables, metadata)`` written by :func:`save`."""
  restored = _restore(
    directory, variables=ocp.args.StandardRestore(), metadata=ocp.args.JsonRestore()
  )
  return dict(restored["variables"]), dict(restored["metadata"])


def load_metadata(directory: str) -> dict[str, Any]:
  """Reads only the metadata written by :func:`save` (no arrays are read)."""
  return dict(_restore(directory, metadata=ocp.args.JsonRestore())["metadata"])
