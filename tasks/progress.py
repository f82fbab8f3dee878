"""`make run`: run the lifecycle once through Airflow's executor and say what happens while
it happens.

`airflow dags test --use-executor` runs each task as the scheduler would (a supervised
process that writes the task log the Airflow UI shows later); its workers report to an API
server, so one is started here on the configured port when none answers there, and stopped
at the end. Progress is read from the run itself: the task states in Airflow's database,
each stage's result, and the train stage's progress file.

    python -m tasks.progress [--conf JSON] [--log PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.services import BIN, airflow_services, bind_host, start, stop_all, wait_healthy
from tasks.settings import Settings
from tasks.stage import RESULT_FILE, safe_name
from tasks.summary import DAG_ID, LINES
from tasks.train.loop import PROGRESS_FILE

POLL_S = 2.0
TRAIN_EVERY_S = 15.0  # at most one training line per this many seconds
DONE = ("success", "failed", "upstream_failed", "skipped", "removed")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _when(value: Any) -> datetime | None:
    """A timestamp from Airflow's database (SQLite gives text, PostgreSQL datetimes)."""
    if value is None or isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or UTC) if value else None
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


@dataclass
class Follower:
    """Prints a line when a task starts or ends, and the training's progress meanwhile."""

    engine: Any
    artifact_root: Path
    since: datetime
    run_id: str | None = None
    seen: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    last_train: float = 0.0
    last_step: int = -1

    def _find_run(self) -> str | None:
        from sqlalchemy import text

        with self.engine.connect() as db:
            row = db.execute(text("SELECT run_id, run_after FROM dag_run WHERE dag_id = :d "
                                  "ORDER BY id DESC LIMIT 1"), {"d": DAG_ID}).first()
        # The run this command created: newer than the command itself.
        return row.run_id if row and _when(row.run_after) >= self.since else None

    def poll(self) -> None:
        from sqlalchemy import text

        if self.run_id is None:
            self.run_id = self._find_run()
            if self.run_id is None:
                return
            print(f"  run {self.run_id}; artifacts in {self.run_dir}", flush=True)
        with self.engine.connect() as db:
            tasks = db.execute(text(
                "SELECT task_id, state, try_number, max_tries, start_date, end_date FROM "
                "task_instance WHERE dag_id = :d AND run_id = :r AND map_index = -1 ORDER BY "
                "start_date"), {"d": DAG_ID, "r": self.run_id}).all()
        for ti in tasks:
            if self.seen.get(ti.task_id) != (ti.state, ti.try_number):
                self.seen[ti.task_id] = (ti.state, ti.try_number)
                self._changed(ti)
        if self.seen.get("train", (None,))[0] == "running":
            self._training()

    def _changed(self, ti: Any) -> None:
        started, ended = _when(ti.start_date), _when(ti.end_date)
        elapsed = _clock((ended - started).total_seconds()) if started and ended else ""
        if ti.state == "running":
            attempt = f" (try {ti.try_number} of {ti.max_tries + 1})" if ti.try_number > 1 else ""
            print(f"  ▶ {ti.task_id}{attempt}", flush=True)
        elif ti.state == "up_for_retry":
            print(f"  ↻ {ti.task_id} failed after {elapsed}; retrying (log: "
                  f"{self._log(ti)})", flush=True)
        elif ti.state == "success":
            print(f"  ✔ {ti.task_id} in {elapsed}{self._figure(ti.task_id)}", flush=True)
        elif ti.state in ("failed", "upstream_failed"):
            where = f" after {elapsed}; log: {self._log(ti)}" if ti.state == "failed" else ""
            print(f"  ✘ {ti.task_id} {ti.state.replace('_', ' ')}{where}", flush=True)

    def _figure(self, task_id: str) -> str:
        path = self.run_dir / task_id / RESULT_FILE
        if task_id not in LINES or not path.is_file():
            return ""
        return " — " + LINES[task_id](json.loads(path.read_text()))[0]

    def _log(self, ti: Any) -> Path:
        base = Path(os.environ.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER", "logs"))
        return (base / f"dag_id={DAG_ID}" / f"run_id={self.run_id}" / f"task_id={ti.task_id}"
                / f"attempt={ti.try_number}.log")

    @property
    def run_dir(self) -> Path:
        return self.artifact_root / DAG_ID / safe_name(self.run_id or "")

    def _training(self) -> None:
        path, now = self.run_dir / "train" / PROGRESS_FILE, time.monotonic()
        if not path.is_file() or now - self.last_train < TRAIN_EVERY_S:
            return
        p = json.loads(path.read_text())
        if p["step"] == self.last_step:
            return
        self.last_step, self.last_train = p["step"], now
        print(f"      train: step {p['step']}/{p['max_steps']}, loss {p['loss']:.3f}, "
              f"{p['tokens_per_second']:,.0f} tokens/s, about {_clock(p['seconds_left'])} "
              "left", flush=True)


def _api_server(state: Path) -> list[str]:
    """Start an API server for the executor's workers unless one answers; returns what to
    stop afterwards."""
    import requests

    port = int(os.environ.get("AIRFLOW__API__PORT", "8080"))
    try:
        if requests.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5).ok:
            return []
    except requests.RequestException:
        pass
    print(f"  starting an Airflow API server on {bind_host()}:{port} for the run's task "
          "workers (stopped at the end)", flush=True)
    server = airflow_services(bind_host(), port)[0]
    start(server, state)
    wait_healthy([server])
    return [server.name]


def run(conf: str, log: Path) -> int:
    from sqlalchemy import create_engine

    settings = Settings.from_env()
    state = Path(os.environ["AIGC_HOME"]) / "run"
    started = _api_server(state)
    follower = Follower(create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]),
                        settings.artifact_root, since=datetime.now(UTC))
    try:
        with open(log, "w") as out:
            proc = subprocess.Popen([str(BIN / "airflow"), "dags", "test", "--use-executor",
                                     DAG_ID, "-c", conf], stdout=out, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                time.sleep(POLL_S)
                follower.poll()
            follower.poll()
        return proc.returncode
    finally:
        if started:
            stop_all(state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.progress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conf", default="{}", help="the run's conf (JSON)")
    parser.add_argument("--log", type=Path, required=True,
                        help="where Airflow's own output goes")
    args = parser.parse_args(argv)
    return run(args.conf, args.log)


if __name__ == "__main__":
    sys.exit(main())
