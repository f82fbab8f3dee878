"""`make run`'s progress lines, read from a run's rows and files as Airflow leaves them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tasks.progress import Follower
from tasks.stage import RESULT_FILE
from tasks.train.loop import PROGRESS_FILE

RUN = "manual__2026-12-02T05:00:00+00:00"
T0 = datetime(2026, 12, 2, 5, 0, 1, tzinfo=UTC)


@pytest.fixture
def follower(tmp_path: Path) -> Follower:
    """A follower on an SQLite database with the columns of Airflow's tables it reads."""
    engine = create_engine(f"sqlite:///{tmp_path / 'airflow.db'}")
    with engine.begin() as db:
        db.execute(text("CREATE TABLE dag_run (id INTEGER PRIMARY KEY, dag_id TEXT, "
                        "run_id TEXT, run_after TEXT)"))
        db.execute(text("CREATE TABLE task_instance (dag_id TEXT, run_id TEXT, task_id TEXT, "
                        "map_index INTEGER, state TEXT, try_number INTEGER, max_tries INTEGER,"
                        " start_date TEXT, end_date TEXT)"))
    return Follower(engine, tmp_path / "artifacts", since=T0 - timedelta(seconds=1))


def _set(follower: Follower, task: str, state: str, try_number: int = 1,
         seconds: int | None = None) -> None:
    end = (T0 + timedelta(seconds=seconds)).isoformat(" ") if seconds is not None else None
    with follower.engine.begin() as db:
        db.execute(text("DELETE FROM task_instance WHERE task_id = :t"), {"t": task})
        db.execute(text("INSERT INTO task_instance VALUES ('aigc_lifecycle', :r, :t, -1, :s, "
                        ":n, 2, :start, :end)"), {"r": RUN, "t": task, "s": state,
                                                  "n": try_number, "start": T0.isoformat(" "),
                                                  "end": end})


def test_a_line_per_stage_start_and_end_with_its_key_figure(follower, capsys):
    follower.poll()  # no run of this command yet: nothing to say
    assert capsys.readouterr().out == ""
    with follower.engine.begin() as db:
        db.execute(text("INSERT INTO dag_run (dag_id, run_id, run_after) VALUES "
                        "('aigc_lifecycle', :r, :a)"), {"r": RUN, "a": T0.isoformat(" ")})
    _set(follower, "ingest", "running")
    follower.poll()
    follower.poll()  # unchanged: said once
    ingest = follower.run_dir / "ingest"
    ingest.mkdir(parents=True)
    (ingest / RESULT_FILE).write_text(json.dumps({
        "rows": 400, "source_uri": "demo://chatterbot", "dataset_hash": "ab" * 32,
        "languages": {"english": 300, "chinese": 100}}))
    _set(follower, "ingest", "success", seconds=75)
    _set(follower, "validate", "up_for_retry", seconds=4)
    follower.poll()
    _set(follower, "validate", "running", try_number=2)
    follower.poll()
    _set(follower, "validate", "failed", try_number=2, seconds=3)
    follower.poll()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"  run {RUN}; artifacts in {follower.run_dir}"
    assert lines[1] == "  ▶ ingest"
    assert lines[2].startswith("  ✔ ingest in 1m15s — dataset: 400 rows from demo://chatterbot")
    assert lines[3].startswith("  ↻ validate failed after 4s; retrying (log: ")
    assert lines[3].endswith("task_id=validate/attempt=1.log)")
    assert lines[4] == "  ▶ validate (try 2 of 3)"
    assert lines[5].startswith("  ✘ validate failed after 3s; log: ")
    assert len(lines) == 6


def test_training_progress_at_most_every_interval_and_only_when_it_moved(follower, capsys,
                                                                         monkeypatch):
    follower.run_id = RUN
    clock = iter([100.0, 105.0, 130.0, 150.0])
    monkeypatch.setattr("tasks.progress.time.monotonic", lambda: next(clock))
    progress = follower.run_dir / "train" / PROGRESS_FILE
    progress.parent.mkdir(parents=True)

    def report(step: int) -> None:
        progress.write_text(json.dumps({"step": step, "max_steps": 600, "loss": 3.14159,
                                        "tokens_per_second": 1234.5, "seconds_left": 95}))
        follower._training()

    report(10)  # first report: said at once
    report(20)  # 5 s later: too soon
    report(30)  # 30 s later: said
    report(30)  # no new step: nothing to say
    assert capsys.readouterr().out.splitlines() == [
        "      train: step 10/600, loss 3.142, 1,234 tokens/s, about 1m35s left",
        "      train: step 30/600, loss 3.142, 1,234 tokens/s, about 1m35s left"]
