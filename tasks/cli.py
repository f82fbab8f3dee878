"""`python -m tasks <stage> --config <json|path>`: the one command a process or a pod runs."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.errors import EXIT_BAD_INPUT, BadInput, ConfigError
from tasks.stage import RESULT_FILE, StageContext, write_json
from tasks.threads import size_thread_pools

# Stage name -> "module:function". Imported lazily so a stage pays only for what it uses.
STAGES: dict[str, str] = {
    "base_model": "tasks.train.base:run",
    "ingest": "tasks.data.ingest:run",
    "validate": "tasks.data.validate:run",
    "preprocess": "tasks.data.preprocess:run",
    "train": "tasks.train.launch:run",
    "register": "tasks.registry.register:run",
    "compress": "tasks.compress.stage:run",
    "evaluate": "tasks.evaluate.offline:run",
    "canary": "tasks.rollout.stage:run",
    "promote": "tasks.registry.promote:run",
    "report": "tasks.report:run",
}

# Stages whose work is numeric (tokenizer training, torch, onnxruntime, a model server): only
# they size their thread pools, which samples the machine's load for a fraction of a second.
MATH_STAGES = frozenset({"preprocess", "train", "compress", "evaluate", "canary"})

log = logging.getLogger("tasks")


def stage_function(stage: str) -> Callable[[StageContext], dict[str, Any] | None]:
    try:
        module, func = STAGES[stage].split(":")
    except KeyError:
        raise ConfigError(f"stage: unknown stage {stage!r} (known: {sorted(STAGES)})") from None
    return getattr(importlib.import_module(module), func)


def run_stage(ctx: StageContext) -> dict[str, Any] | None:
    """Run one stage and persist its result next to its artifacts (the process/pod handoff).
    None: this process is not the one that reports (a TrainJob's other nodes)."""
    result = stage_function(ctx.stage)(ctx)
    if result is not None:
        write_json(ctx.stage_dir / RESULT_FILE, result)
    return result


def _read_payload(source: str) -> dict[str, Any]:
    text = source if source.lstrip().startswith("{") else Path(source).read_text()
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks", description=__doc__)
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--config", required=True,
                        help="stage payload: JSON text or a path to a JSON file")
    args = parser.parse_args(argv)
    # Libraries stay at WARNING: GX and MLflow are chatty at INFO and drown the stage's own log.
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("tasks").setLevel(logging.INFO)
    if args.stage in MATH_STAGES:
        log.info("%s: %d math thread(s) on the free cores", args.stage, size_thread_pools())
    try:
        payload = _read_payload(args.config)
        payload["stage"] = args.stage
        ctx = StageContext.from_payload(payload)
        result = run_stage(ctx)
    except BadInput as exc:
        log.error("bad input, not retrying: %s", exc)
        return EXIT_BAD_INPUT
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
