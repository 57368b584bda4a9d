"""The experiment's logs: one row per value, a restarted run's old rows dropped."""

import csv

from experiments import logs


def rows(workdir):
  with open(workdir / "logs" / "metrics.csv", newline="") as file:
    return list(csv.reader(file))


def write(log, run, step, value):
  log.write(run, 0, task="t", stage="train", step=step, values={"loss": value})


def test_rerun_keeps_the_last_value_and_drops_a_restarted_runs_old_rows(tmp_path):
  first = logs.MetricsLog(str(tmp_path))
  write(first, "kept", 1, 0.5)
  write(first, "restarted", 1, 0.5)
  write(first, "restarted", 2, 0.25)
  first.close(complete=True)
  second = logs.MetricsLog(str(tmp_path))  # goes on from logs/
  write(second, "kept", 1, 0.75)  # logged again (a resumed stage): replaces
  second.restart("restarted", (0,))
  write(second, "restarted", 1, 0.125)
  second.close(complete=True)
  assert rows(tmp_path) == [
    list(logs.COLUMNS),
    ["kept", "0", "t", "train", "1", "loss", "0.75"],
    ["restarted", "0", "t", "train", "1", "loss", "0.125"],
  ]
  assert not (tmp_path / "logs.partial").exists()


def test_a_kill_before_the_header_or_mid_row_leaves_a_readable_csv(tmp_path):
  partial = tmp_path / "logs.partial"
  partial.mkdir()
  (partial / "metrics.csv").write_text("")  # killed before anything was flushed
  log = logs.MetricsLog(str(tmp_path))
  write(log, "run", 1, 0.5)
  log._file.write("run,0,t,tra")  # killed mid-row
  log._file.flush()
  log.close(complete=False)
  log = logs.MetricsLog(str(tmp_path))
  write(log, "run", 2, 0.25)
  log.close(complete=True)
  assert rows(tmp_path) == [
    list(logs.COLUMNS),
    ["run", "0", "t", "train", "1", "loss", "0.5"],
    ["run", "0", "t", "train", "2", "loss", "0.25"],
  ]
