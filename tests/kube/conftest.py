"""Tier 1: a real kube-apiserver with a simulated node and job controllers, one per package.

The build happens in `make test`'s install step (scripts/build_kube_apiserver.sh, cached
outside the clone); where it cannot (no apt as root), these tests skip and say why, except
under CI=true, where that is a failure.

The Airflow runs against it are scenarios with a home each (their own Airflow and MLflow
databases, copied from one migrated home) and a namespace each, so they run side by side:
most of a run is waiting on pods, triggers and retries.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tasks.localenv import local_env
from tasks.stage import safe_name
from tasks.summary import newest_run, parse_runs
from tests.e2e.airflow_env import BIN, airflow_env, migrate
from tests.kube.cluster import (
    ApiServer,
    JobControllers,
    Node,
    Switch,
    apiserver_binary,
    wait_for,
)
from tests.kube.crds import KINDS, crd

NAMESPACE = "aigc"
DAG_ID = "aigc_k8s_tier1"
DAGS = Path(__file__).with_name("dags")
# The connection through the switch: the one scenario that loses its API server uses it.
SWITCHED = "kubernetes_switched"


@dataclass
class Cluster:
    api: Any
    core: Any
    custom: Any
    node: Node
    switch: Switch
    jobs: JobControllers
    server: ApiServer
    folder: Path

    def namespace(self, name: str) -> str:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.create_namespace({"metadata": {"name": name}})
        except ApiException as exc:
            if exc.status != 409:
                raise
        return name


def _need_apiserver() -> Path:
    try:
        return apiserver_binary()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; CI must build it (scripts/build_kube_apiserver.sh)")
        pytest.skip(f"{exc}; tier-1 Kubernetes tests need scripts/build_kube_apiserver.sh")


def _register_crds(api: Any) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    for kind in KINDS:
        ext.create_custom_resource_definition(crd(kind))
    for kind in KINDS:
        name = f"{kind.plural}.{kind.group}"
        wait_for(lambda name=name: any(
            c.type == "Established" and c.status == "True"
            for c in ext.read_custom_resource_definition(name).status.conditions or []),
            timeout=20, what=f"CRD {name}")


@pytest.fixture(scope="package")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    from kubernetes import client, config

    warnings.filterwarnings("ignore", message="Unverified HTTPS request")
    binary = _need_apiserver()
    folder = tmp_path_factory.mktemp("cluster")
    server = ApiServer(folder)
    server.start(binary)
    parts: list[Any] = []
    try:
        api = config.new_client_from_config(str(server.kubeconfig(folder / "direct.yaml")))
        _register_crds(api)
        parts += [Node(api, folder), JobControllers(api, folder)]
        cluster = Cluster(api=api, core=client.CoreV1Api(api),
                          custom=client.CustomObjectsApi(api), node=parts[0], jobs=parts[1],
                          switch=Switch(int(server.url.rsplit(":", 1)[1])), server=server,
                          folder=folder)
        cluster.namespace(NAMESPACE)
        yield cluster
    finally:
        for part in parts:
            part.stop()
        server.stop()


@dataclass
class Scenario:
    """One Airflow home (Airflow and MLflow databases, artifacts) running the tier-1 DAG."""

    name: str
    env: dict[str, str]
    home: Path
    logs: list[Path] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.home / "recorded.json"

    def _log(self, what: str) -> Path:
        path = self.home / f"{len(self.logs)}-{what}.log"
        self.logs.append(path)
        return path

    def _airflow(self, what: str, *args: str, background: bool) -> Any:
        """An airflow command in this home, its output in a log of its own; a Popen when
        background (completed() reads it back)."""
        log = self._log(what)
        proc = subprocess.Popen([str(BIN / "airflow"), *args], env=self.env,
                                stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        if background:
            return proc
        proc.wait(timeout=600)
        return self.completed(proc)

    def completed(self, proc: subprocess.Popen) -> subprocess.CompletedProcess:
        log = self.logs[-1].read_text()
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout=log, stderr="")

    def dags_test(self, conf: dict, *, background: bool = False) -> Any:
        """`airflow dags test` of the tier-1 DAG."""
        self.out.unlink(missing_ok=True)
        return self._airflow("dags-test", "dags", "test", DAG_ID, "-c", json.dumps(conf),
                             background=background)

    def tasks_test(self, task_id: str, run_id: str, *, background: bool = False) -> Any:
        """`airflow tasks test` of one task in an existing run: how the tests retry a task
        instance (same run, same task, same labels) without a scheduler's retry delay."""
        return self._airflow("tasks-test", "tasks", "test", DAG_ID, task_id, run_id,
                             background=background)

    def last_log(self) -> str:
        return self.logs[-1].read_text() if self.logs else ""

    def last_run_id(self) -> str:
        proc = subprocess.run([str(BIN / "airflow"), "dags", "list-runs", DAG_ID, "-o", "json"],
                              env=self.env, capture_output=True, text=True, timeout=120,
                              check=True)
        return newest_run(parse_runs(proc.stdout))["run_id"]

    def recorded(self) -> dict | None:
        """What the task downstream of the stage received as its XCom."""
        return json.loads(self.out.read_text()) if self.out.exists() else None

    def stage_dir(self, run_id: str, stage: str = "train") -> Path:
        return Path(self.env["AIGC_HOME"]) / "artifacts" / DAG_ID / safe_name(run_id) / stage


@dataclass
class Deployment:
    """A migrated Airflow home and a prepared sample, from which scenarios are made."""

    template: Path
    prepared: Path
    base_env: dict[str, str]
    cluster: Cluster
    root: Path

    def scenario(self, name: str, *, namespace: str = NAMESPACE, deferrable: bool = False,
                 switched: bool = False) -> Scenario:
        home = self.root / name
        var = home / "var"
        shutil.copytree(self.template, var / "airflow")
        settings = {"namespace": self.cluster.namespace(namespace),
                    "image": "aigc-trainer:tier1", "image_pull_policy": "Never",
                    "startup_timeout_seconds": 120, "schedule_timeout_seconds": 120,
                    "job_poll_seconds": 1, "termination_grace_seconds": 5,
                    "deferrable": deferrable,
                    "kubernetes_conn_id": SWITCHED if switched else "kubernetes_default"}
        (home / "kubernetes.json").write_text(json.dumps(settings))
        env = self.base_env | local_env(var) | {
            "AIGC_ALLOWED_ROOTS": f"{home},{self.prepared}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIGC_TIER1_OUT": str(home / "recorded.json"),
            "AIGC_KUBERNETES_CONFIG": str(home / "kubernetes.json"),
        }
        return Scenario(name=name, env=env, home=home)


def _connection(kubeconfig: Path) -> str:
    return json.dumps({"conn_type": "kubernetes",
                       "extra": {"kube_config_path": str(kubeconfig), "namespace": NAMESPACE}})


@pytest.fixture(scope="package")
def deployment(cluster: Cluster, tmp_path_factory) -> Deployment:
    """Airflow migrated once, the tier-1 DAG, connections to the cluster (one direct, one
    through the switch) and a prepared demo sample for the train stage."""
    from tests.conftest import TINY, prepare_demo, scratch_base

    root = tmp_path_factory.mktemp("k8s")
    prepared = root / "prepared"
    prepared.mkdir()
    prep = prepare_demo(prepared)
    switched = cluster.server.kubeconfig(root / "switched.yaml",
                                         url=f"https://127.0.0.1:{cluster.switch.port}")
    env = airflow_env(root / "template", **{
        "AIGC_LIFECYCLE_DEFAULTS": json.dumps(TINY | {"compute_target": "kubernetes",
                                                      "launcher": "single", "max_steps": 10}),
        "AIGC_TIER1_INPUTS": json.dumps({"preprocess": prep, "base_model": scratch_base()}),
        "AIRFLOW_CONN_KUBERNETES_DEFAULT": _connection(cluster.folder / "direct.yaml"),
        f"AIRFLOW_CONN_{SWITCHED.upper()}": _connection(switched),
        "PYTHONWARNINGS": "ignore:Unverified HTTPS request",
    })
    migrate(env)
    return Deployment(template=Path(env["AIRFLOW_HOME"]), prepared=prepared, base_env=env,
                      cluster=cluster, root=root)


@pytest.fixture(scope="package")
def scenarios(cluster: Cluster, deployment: Deployment) -> Iterator[dict[str, Future]]:
    """Every Airflow scenario of the tier-1 tests, started together; a test awaits its own."""
    from tests.kube import scenarios as play

    plan = {
        # name: (driver, namespace, deferrable, through the switch, conf)
        "deferrable_pod": (play.run_only, "aigc-pod", True, False, {}),
        "killed_worker": (play.killed_worker, "aigc-kill", False, False, None),
        "api_lost": (play.api_lost, "aigc-cut", False, True, None),
        "mpijob": (play.run_then_retry, "aigc-mpi", False, False,
                   {"launcher": "horovod", "workers": 1, "nodes": 2}),
        "trainjob": (play.run_only, "aigc-torch", True, False,
                     {"launcher": "ddp", "workers": 1, "nodes": 2}),
    }
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        futures = {}
        for name, (driver, namespace, deferrable, switched, conf) in plan.items():
            scenario = deployment.scenario(name, namespace=namespace, deferrable=deferrable,
                                           switched=switched)
            cluster.jobs.namespaces.add(namespace)
            args = (cluster, scenario, namespace) + ((conf,) if conf is not None else ())
            futures[name] = pool.submit(driver, *args)
        yield futures


def outcome(scenarios: dict[str, Future], name: str) -> Any:
    return scenarios[name].result(timeout=900)
