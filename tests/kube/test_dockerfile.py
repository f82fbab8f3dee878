"""The trainer and model server images follow the project's install recipe (no Docker here)."""

import json
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


# The model server image (docker/server/Dockerfile).
SERVER_DOCKERFILE = (PROJECT_ROOT / "docker" / "server" / "Dockerfile").read_text()
SERVER_REQUIREMENTS = (PROJECT_ROOT / "requirements-server.txt").read_text()


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), " ".join(args.split())))
    return out


def _final_stage(text: str) -> list[tuple[str, str]]:
    steps = _instructions(text)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(text: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line).group(0) for line in lines if line]


def test_server_builds_from_the_pinned_base_in_two_stages():
    steps = _instructions(SERVER_DOCKERFILE)
    assert ("ARG", "BASE=python:3.11.7-slim-bookworm") in steps
    assert [args for op, args in steps if op == "FROM"] == ["${BASE} AS build", "${BASE}"]
    assert ("COPY", "--from=build /opt/venv /opt/venv") in _final_stage(SERVER_DOCKERFILE)


def test_server_installs_pinned_torch_first_then_its_names_under_constraints():
    pinned = re.search(r"^torch==(\S+)", REQUIREMENTS, re.M).group(1)
    steps = _instructions(SERVER_DOCKERFILE)
    assert ("ARG", "TORCH_INDEX=https://download.pytorch.org/whl/cpu") in steps
    installs = [args for op, args in steps if op == "RUN" and "pip install" in args]
    first = installs[0].split("&&")
    assert first[0].strip() == f"pip install torch=={pinned} --index-url ${{TORCH_INDEX}}"
    assert first[1].strip() == "pip install -c requirements.txt -r requirements-server.txt"
    # Installing requirements.txt itself would pull Airflow and the training stack.
    assert "-r requirements.txt" not in SERVER_DOCKERFILE
    assert installs[-1] == "pip install --no-deps ."


def test_server_requirements_are_names_that_requirements_txt_pins():
    lines = (line.split("#", 1)[0].strip() for line in SERVER_REQUIREMENTS.splitlines())
    names = [line for line in lines if line]
    # Names only: a version here could disagree with requirements.txt, the one place they live.
    assert names and all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in names)
    known = {_canonical(n) for n in _requirement_names(REQUIREMENTS)}
    missing = sorted(n for n in names if _canonical(n) not in known)
    assert not missing, f"not in requirements.txt: {missing}"


def test_requirements_txt_is_usable_as_a_constraints_file():
    """pip refuses extras, editables and URLs in a constraints file (`-c requirements.txt`)."""
    for line in REQUIREMENTS.splitlines():
        line = line.split("#", 1)[0].strip()
        assert not ("[" in line or line.startswith("-e") or "@" in line), line


def test_server_package_is_part_of_the_installed_distribution():
    """`pip install --no-deps .` must install `serving`, or `import serving.app` fails."""
    import fnmatch
    import tomllib

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert any(fnmatch.fnmatch("serving", pattern) for pattern in include), include


def test_server_every_copied_path_exists():
    for op, args in _instructions(SERVER_DOCKERFILE):
        if op == "COPY" and not args.startswith("--from"):
            for path in args.split()[:-1]:
                assert (PROJECT_ROOT / path).exists(), path


def test_server_runs_as_non_root_and_smoke_imports_at_build():
    final = _final_stage(SERVER_DOCKERFILE)
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1] == "1000"
    assert ("RUN", "useradd --create-home --uid 1000 aigc") in final
    assert ("RUN", 'python -c "import serving.app"') in final


def test_server_cmd_port_and_healthcheck():
    final = _final_stage(SERVER_DOCKERFILE)
    assert [json.loads(args) for op, args in final if op == "CMD"] == [
        ["python", "-m", "serving"]]
    assert [args for op, args in final if op == "EXPOSE"] == ["8000"]
    env = " ".join(args for op, args in final if op == "ENV")
    assert "AIGC_SERVER_HOST=0.0.0.0" in env and "AIGC_SERVER_PORT=8000" in env
    (check,) = [args for op, args in final if op == "HEALTHCHECK"]
    command = json.loads(check.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    assert "urllib.request.urlopen" in command[2] and "/healthz" in command[2]


# The Airflow image of a Kubernetes deployment (docker/airflow/Dockerfile).
AIRFLOW_DOCKERFILE = (PROJECT_ROOT / "docker" / "airflow" / "Dockerfile").read_text()


def test_airflow_image_pins_torch_and_airflow_and_copies_what_exists():
    pinned = re.search(r"^torch==(\S+)", REQUIREMENTS, re.M).group(1)
    airflow = re.search(r"^apache-airflow==(\S+)", REQUIREMENTS, re.M).group(1)
    assert f"torch=={pinned}" in AIRFLOW_DOCKERFILE
    assert f"ARG AIRFLOW_VERSION={airflow}" in AIRFLOW_DOCKERFILE
    for src in re.findall(r"^COPY (?:--chown=\S+ )?(.+) \S+$", AIRFLOW_DOCKERFILE, re.M):
        for path in src.split():
            assert (PROJECT_ROOT / path).exists(), path
    # Its DAGs build pod tasks: the image names its cluster settings.
    assert "AIGC_KUBERNETES_CONFIG=" in AIRFLOW_DOCKERFILE
