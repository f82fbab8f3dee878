"""The contract every stage shares: its context, its artifact folder and atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.config import LifecycleConfig
from tasks.settings import Settings

RESULT_FILE = "result.json"


def safe_name(value: str) -> str:
    """Airflow run ids carry ':' and '+'; keep paths portable across filesystems and S3."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", value)


@dataclass(frozen=True)
class StageContext:
    """What a stage receives: who runs it, the run config, and upstream stages' results."""

    stage: str
    dag_id: str
    run_id: str
    config: LifecycleConfig
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings.from_env)

    @property
    def run_dir(self) -> Path:
        return self.settings.artifact_root / safe_name(self.dag_id) / safe_name(self.run_id)

    @property
    def stage_dir(self) -> Path:
        path = self.run_dir / self.stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def payload_path(self) -> Path:
        return self.stage_dir / "payload.json"

    def hand_off(self) -> Path:
        """Write the payload a stage process or pod reads, and clear an earlier attempt's
        result so it can never pass for this attempt's."""
        (self.stage_dir / RESULT_FILE).unlink(missing_ok=True)
        return write_json(self.payload_path, self.to_payload())

    def earlier_result(self) -> dict[str, Any] | None:
        """The result an earlier try left for exactly this payload: its pod or job finished
        after the task had lost track of it. None when there is none or the payload changed
        (other inputs, other config): then the stage must run again."""
        result = self.stage_dir / RESULT_FILE
        if not (result.exists() and self.payload_path.exists()):
            return None
        same = json.loads(self.payload_path.read_text()) == json.loads(
            json.dumps(self.to_payload()))
        return self.read_result() if same else None

    def read_result(self) -> dict[str, Any]:
        """The result the stage process or pod wrote next to its artifacts."""
        return json.loads((self.stage_dir / RESULT_FILE).read_text())

    def input(self, stage: str) -> dict[str, Any]:
        try:
            return self.inputs[stage]
        except KeyError:
            raise KeyError(f"stage {self.stage!r} needs the result of {stage!r}") from None

    def to_payload(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "config": self.config.to_dict(),
            "inputs": self.inputs,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> StageContext:
        return cls(
            stage=payload["stage"],
            dag_id=payload["dag_id"],
            run_id=payload["run_id"],
            config=LifecycleConfig.from_dict(payload.get("config", {})),
            inputs=payload.get("inputs", {}),
        )


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces target in one rename.

    A retried or concurrent reader sees either the old complete file/folder or the new one,
    never a half-written artifact.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if tmp.is_dir() and target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(target: Path, data: Any) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
    return target
