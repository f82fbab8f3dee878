"""The trainer image follows the project's own install recipe (no Docker engine here)."""

import re

from tasks.settings import PROJECT_ROOT

DOCKERFILE = (PROJECT_ROOT / "docker" / "trainer" / "Dockerfile").read_text()
REQUIREMENTS = (PROJECT_ROOT / "requirements.txt").read_text()


def test_torch_pin_matches_requirements():
    pinned = re.search(r"^torch==(\S+)", REQUIREMENTS, re.M).group(1)
    assert f"torch=={pinned}" in DOCKERFILE


def test_horovod_is_built_by_the_same_script_and_checked():
    assert "scripts/build_horovod.sh" in DOCKERFILE
    assert "horovodrun --check-build" in DOCKERFILE
    assert "libopenmpi-dev" in DOCKERFILE  # MPI controller for MPIJob launchers


def test_every_copied_path_exists():
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, re.M):
        for path in src.split():
            assert (PROJECT_ROOT / path).exists(), path


def test_compression_stack_is_installed_and_imported_at_build():
    assert "pip install -r requirements.txt" in DOCKERFILE
    assert "tasks.compress.stage" in DOCKERFILE  # INC / ModelOpt / onnxruntime import there
    assert 'ARG TENSORRT=""' in DOCKERFILE  # opt-in on CUDA bases only
