"""Networks on disk: variables and JSON metadata in one orbax checkpoint.

Orbax writes into a temporary directory and renames it when complete, so a
checkpoint directory either holds a whole checkpoint or does not exist; arrays are
stored with TensorStore and metadata as JSON, so loading never executes code. A
SHA-256 digest of every array is stored beside them and checked on loading, so a
damaged file is refused rather than read as other numbers.
"""

import hashlib
import os
from typing import Any

import jax
import numpy as np
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
        digests=ocp.args.JsonSave(digests(variables)),
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
  """Reads ``(variables, metadata)`` written by :func:`save`, their digests
  checked (``ValueError`` naming the directory if one differs)."""
  items = {"variables": ocp.args.StandardRestore(), "metadata": ocp.args.JsonRestore()}
  # Checkpoints of lwf_jax before digests have none to check.
  if os.path.isdir(os.path.join(directory, "digests")):
    items["digests"] = ocp.args.JsonRestore()
  restored = _restore(directory, **items)
  variables = dict(restored["variables"])
  if "digests" in items:
    check_digests(variables, restored["digests"], where=os.path.abspath(directory))
  return variables, dict(restored["metadata"])


def digests(tree: Any) -> dict[str, str]:
  """``{path: SHA-256 of the array's dtype, shape and bytes}`` of every leaf."""
  return {
    jax.tree_util.keystr(path): _digest(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
  }


def check_digests(tree: Any, expected: dict[str, str], *, where: str) -> None:
  """Raises ``ValueError`` unless ``tree``'s arrays have the ``expected`` digests."""
  found, expected = digests(tree), dict(expected)
  if found != expected:
    changed = sorted(k for k in {*found, *expected} if found.get(k) != expected.get(k))
    raise ValueError(
      f"the checkpoint at {where} is damaged: arrays {changed[:5]} do not match "
      "their stored digests; delete that directory"
    )


def _digest(leaf: Any) -> str:
  array = np.ascontiguousarray(leaf)
  header = f"{array.dtype.str}{array.shape}".encode()
  return hashlib.sha256(header + array.tobytes()).hexdigest()


def load_metadata(directory: str) -> dict[str, Any]:
  """Reads only the metadata written by :func:`save` (no arrays are read)."""
  return dict(_restore(directory, metadata=ocp.args.JsonRestore())["metadata"])
