"""Checkpoints of a sequence of tasks, to resume it where it stopped.

A run (one method, one seed or a group of vmapped seeds) keeps one orbax
checkpoint, the latest, in its own directory, written at two kinds of point:

- after each task, learned and evaluated: the grown variables (every head,
  BatchNorm statistics), the heads' specs in order, and the accuracy matrices so
  far;
- during a task's warm-up and training, at the end of each epoch in which a
  multiple of ``every_steps`` steps falls: the train state (parameters, optimizer
  state, BatchNorm statistics, step, dropout key), the recorded old-head outputs
  of the task, the variables before the task, and how many epochs are done.

Each also holds the run's settings (JSON), checked against the run's own before
anything is read or trained. Orbax writes a checkpoint into a temporary directory
and renames it when complete, and deletes the previous one only then, so a run
killed at any point leaves a whole checkpoint to resume from. Arrays are stored
with TensorStore, everything else as JSON: reading never executes code. Every key
of the run is derived from its seed and its position (task, stage, epoch), so a
resumed run takes exactly the steps an uninterrupted one would.
"""

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from lwf_jax import checkpoints, models, train

FORMAT = 1
STAGES = ("warm-up", "train")  # the order of a task's training stages


@dataclasses.dataclass(frozen=True)
class Position:
  """Where a checkpoint was taken: after task ``task`` (``stage`` None), or after
  ``epochs_done`` epochs of ``stage`` of task ``task``."""

  task: int
  stage: str | None = None
  epochs_done: int = 0


class Saved:
  """The latest checkpoint of a run: its position and JSON metadata; the arrays
  are read on demand."""

  def __init__(self, manager: ocp.CheckpointManager, step: int, metadata: dict):
    self._manager, self._step, self.metadata = manager, step, metadata
    self._arrays = None
    self.position = Position(**metadata["position"])
    self.directory = os.path.join(str(manager.directory), str(step))

  @property
  def head_specs(self) -> tuple[models.HeadSpec, ...]:
    return tuple(
      models.HeadSpec(s["name"], s["num_classes"], tuple(s["hidden"]), s["multi_label"])
      for s in self.metadata["heads"]
    )

  def arrays(self) -> dict:
    """The checkpoint's arrays, as nested dicts; read and checked once (resuming
    asks for them three times: the network, the recordings, the train state)."""
    if self._arrays is None:
      self._arrays = self._read_arrays()
    return self._arrays

  def _read_arrays(self) -> dict:
    try:
      restored = self._manager.restore(
        self._step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore())
      )
    except Exception as error:
      raise ValueError(
        f"cannot read the checkpoint at {self.directory}: {error}; delete that "
        "directory to start the run afresh"
      ) from error
    arrays = dict(restored["arrays"])
    checkpoints.check_digests(
      arrays, self.metadata.get("digests", {}), where=self.directory
    )
    return {"before": {}, "recorded": {}, **arrays}


class RunCheckpoints:
  """The checkpoints of one run in ``directory``.

  Args:
    directory: the run's own directory.
    settings: JSON-serialisable settings that determine the run; a checkpoint
      with other settings is refused.
    every_steps: also checkpoint during training, at the end of each epoch in
      which a multiple of this many steps falls; 0: after each task only.
    info: JSON-serialisable notes stored alongside and never checked, such as
      the whole config.
  """

  def __init__(
    self,
    directory: str,
    settings: dict,
    *,
    every_steps: int = 0,
    info: dict | None = None,
  ):
    train.check_count("checkpoint every_steps", every_steps, minimum=0)
    self.directory = os.path.abspath(directory)
    self.settings = _as_json(settings)
    self.info = _as_json(info or {})
    self.every_steps = every_steps
    self._manager = None

  @property
  def manager(self) -> ocp.CheckpointManager:
    if self._manager is None:
      options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False
      )
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    return self._manager

  def latest(self) -> Saved | None:
    """The latest checkpoint, once its settings are checked; ``None`` if none.

    Raises ``ValueError`` (naming the directory, and the settings that differ)
    for a damaged checkpoint or one of other settings, before anything is written.
    """
    if not os.path.isdir(self.directory):
      return None
    step = self.manager.latest_step()
    if step is None:
      return None
    where = os.path.join(self.directory, str(step))
    try:
      metadata = self.manager.restore(
        step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
      )["metadata"]
      saved = Saved(self.manager, step, dict(metadata))
    except Exception as error:
      raise ValueError(
        f"cannot read the checkpoint at {where}: {error}; delete that directory "
        "to start the run afresh"
      ) from error
    if metadata.get("format") != FORMAT:
      raise ValueError(
        f"the checkpoint at {where} has format {metadata.get('format')!r}, "
        f"this version reads {FORMAT}"
      )
    if metadata.get("settings") != self.settings:
      old, new = _flat(metadata.get("settings") or {}), _flat(self.settings)
      changed = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
      raise ValueError(
        f"the checkpoint at {where} is of a run with other settings "
        f"({', '.join(changed)}); use another --workdir or delete {self.directory}"
      )
    return saved

  def save_task(
    self,
    position: int,
    model: models.MultiHeadNet,
    variables: models.Variables,
    summary: dict[str, Any],
  ) -> None:
    """The checkpoint after task ``position`` is learned and evaluated;
    ``summary``: JSON (accuracy matrices so far, wall time)."""
    self._save(Position(position), model, {"variables": variables}, summary)

  def save_stage(
    self,
    position: Position,
    model: models.MultiHeadNet,
    state: train.TrainState,
    *,
    before: models.Variables,
    recorded: dict[str, Any],
    summary: dict[str, Any],
  ) -> None:
    """A checkpoint during a task's stage: its train state and what it started
    from (``before``, the variables before the task; ``recorded``, the task's
    recorded outputs); ``model`` is the grown network."""
    arrays = {"state": state_arrays(state), "before": before, "recorded": recorded}
    self._save(position, model, arrays, summary)

  def _save(self, position, model, arrays, summary) -> None:
    metadata = {
      "format": FORMAT,
      "settings": self.settings,
      "info": self.info,
      "position": dataclasses.asdict(position),
      "heads": [
        {
          "name": s.name,
          "num_classes": s.num_classes,
          "hidden": list(s.hidden_sizes),
          "multi_label": s.multi_label,
        }
        for s in model.head_specs
      ],
      "summary": summary,
    }
    arrays = _without_empty(jax.device_get(arrays))
    metadata["digests"] = checkpoints.digests(arrays)
    step = (self.manager.latest_step() or 0) + 1
    self.manager.save(
      step,
      args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(arrays),
        metadata=ocp.args.JsonSave(_as_json(metadata)),
      ),
    )
    self.manager.wait_until_finished()

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()
      self._manager = None


def state_arrays(state: train.TrainState) -> dict[str, Any]:
  """A train state's arrays as nested dicts (the dropout key as its raw data)."""
  return {
    "params": state.params,
    "batch_stats": state.batch_stats,
    "opt_state": serialization.to_state_dict(state.opt_state),
    "step": state.step,
    "dropout_key": jax.random.key_data(state.dropout_rng),
  }


def restore_state(arrays: dict, fresh: train.TrainState) -> train.TrainState:
  """The train state saved as ``arrays`` (see :func:`state_arrays`), in the
  structure of ``fresh``, the same stage's newly created state; ``ValueError``
  if any array's shape or dtype differs from ``fresh``'s."""
  like = state_arrays(fresh)
  arrays = _with_empty(arrays, like)
  if jax.tree.structure(arrays) != jax.tree.structure(like):
    raise ValueError("the saved train state does not fit the network's structure")
  mismatched = [
    jax.tree_util.keystr(path)
    for (path, want), got in zip(
      jax.tree_util.tree_leaves_with_path(like), jax.tree.leaves(arrays), strict=True
    )
    if (np.shape(got), np.asarray(got).dtype)
    != (np.shape(want), np.asarray(want).dtype)
  ]
  if mismatched:
    raise ValueError(f"the saved train state does not fit the network: {mismatched}")
  return fresh.replace(
    params=arrays["params"],
    batch_stats=arrays["batch_stats"],
    opt_state=serialization.from_state_dict(fresh.opt_state, arrays["opt_state"]),
    step=arrays["step"],
    dropout_rng=jax.random.wrap_key_data(arrays["dropout_key"]),
  )


def _without_empty(tree: Any) -> Any:
  """``tree`` without empty sub-dicts and ``None`` (orbax stores neither)."""
  if isinstance(tree, dict):
    kept = {k: _without_empty(v) for k, v in tree.items() if v is not None}
    return {k: v for k, v in kept.items() if not (isinstance(v, dict) and not v)}
  return tree


def _with_empty(restored: Any, like: Any) -> Any:
  """``restored`` with the empty sub-dicts of ``like`` put back."""
  if isinstance(like, dict):
    return {k: _with_empty(restored.get(k, {}), v) for k, v in like.items()}
  return restored


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
  """``{'a.b': leaf}`` of nested dicts."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _as_json(tree: Any) -> Any:
  """JSON-compatible: tuples as lists, as they read back."""
  return json.loads(json.dumps(tree))


@dataclasses.dataclass(frozen=True)
class TaskCheckpoints:
  """The checkpoints of one task of a run: ``saved`` is the run's latest when it
  was taken during this task (then the task resumes from it), else ``None``."""

  run: RunCheckpoints
  task: int
  summary: Callable[[], dict[str, Any]]  # the run's JSON summary so far
  saved: Saved | None = None

  def recorded(self) -> dict | None:
    """The task's recorded outputs, when resuming it."""
    return None if self.saved is None else self.saved.arrays()["recorded"]

  def stage(
    self,
    stage: str,
    model: models.MultiHeadNet,
    *,
    before: models.Variables,
    recorded: dict[str, Any],
  ) -> "StageCheckpoints":
    """The checkpoints of ``stage`` of the task, on the grown ``model``."""
    return StageCheckpoints(self, stage, model, before, recorded)


@dataclasses.dataclass(frozen=True)
class StageCheckpoints:
  """Where a stage starts (fresh or from its checkpoint), and its saving."""

  task: TaskCheckpoints
  stage: str
  model: models.MultiHeadNet
  before: models.Variables
  recorded: dict[str, Any]

  @property
  def every_steps(self) -> int:
    return self.task.run.every_steps

  def start(self, fresh: train.TrainState, num_epochs: int) -> tuple:
    """``(state, epochs done)``: ``fresh`` and 0, or the saved state of this
    stage; a stage before the saved one is done (``fresh``, ``num_epochs``: the
    later stage's saved state holds its outcome)."""
    saved = self.task.saved
    if saved is None or saved.position.stage is None:
      return fresh, 0
    at, this = STAGES.index(saved.position.stage), STAGES.index(self.stage)
    if at > this:
      return fresh, num_epochs
    if at < this:
      return fresh, 0
    state = restore_state(saved.arrays()["state"], fresh)
    return state, saved.position.epochs_done

  def save(self, state: train.TrainState, epochs_done: int) -> None:
    self.task.run.save_stage(
      Position(self.task.task, self.stage, epochs_done),
      self.model,
      state,
      before=self.before,
      recorded=self.recorded,
      summary=self.task.summary(),
    )
