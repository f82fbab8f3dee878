"""A real kube-apiserver (and etcd) on loopback, a node that runs pods as local processes, and
the two Kubeflow controllers reduced to what the tests need.

Only what cannot exist here is simulated: the kubelet (no container runtime), the scheduler
(one node) and the job operators. The API server itself — admission, validation, defaulting,
CRD pruning, log proxying to the node — is the real 1.20 one, built by
scripts/build_kube_apiserver.sh.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tasks.runner import localize

ROOT = Path(__file__).resolve().parents[2]
NODE = "sim-node"
TOKEN = "tier1-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apiserver_binary() -> Path:
    """The cached build, or the reason the tier-1 tests cannot run on this machine."""
    proc = subprocess.run([str(ROOT / "scripts/build_kube_apiserver.sh")], capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"no kube-apiserver: {proc.stderr.strip()[-500:]}")
    return Path(proc.stdout.strip().splitlines()[-1]) / "kube-apiserver"


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A key and certificate for loopback (the node's log endpoint, the SA signing key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = folder / f"{name}.key", folder / f"{name}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@dataclass
class ApiServer:
    """etcd + kube-apiserver processes; `url` is where clients connect."""

    folder: Path
    url: str = ""
    procs: list[subprocess.Popen] = field(default_factory=list)

    def start(self, binary: Path) -> None:
        etcd_port, peer_port, port = free_port(), free_port(), free_port()
        logs = self.folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self._spawn("etcd", [
            "etcd", "--data-dir", str(self.folder / "etcd"), "--name", "tier1",
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"tier1=http://127.0.0.1:{peer_port}"], logs)
        sa_key, _ = self_signed(self.folder, "sa")
        tokens = self.folder / "tokens.csv"
        tokens.write_text(f"{TOKEN},admin,admin,system:masters\n")
        self._spawn("kube-apiserver", [
            str(binary), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={port}", "--insecure-port=0",
            f"--cert-dir={self.folder / 'certs'}", f"--token-auth-file={tokens}",
            "--authorization-mode=AlwaysAllow",
            f"--service-account-key-file={sa_key}",
            f"--service-account-signing-key-file={sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.96.0.0/16",
            # No token controller runs: pods name a service account that need not exist.
            # Default tolerations would be added to every pod read back; the tests compare
            # what they sent with what was stored.
            "--disable-admission-plugins=ServiceAccount,DefaultTolerationSeconds",
            "--kubelet-preferred-address-types=InternalIP",
            "--enable-priority-and-fairness=false", "--logtostderr=true", "--v=1"], logs)
        self.url = f"https://127.0.0.1:{port}"
        self._wait_ready()

    def _spawn(self, name: str, argv: list[str], logs: Path) -> None:
        out = (logs / f"{name}.log").open("w")
        self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _wait_ready(self, timeout: float = 90) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}: see "
                                       f"{self.folder / 'logs'}")
            try:
                r = requests.get(f"{self.url}/readyz", verify=False, timeout=2,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"kube-apiserver not ready in {timeout}s: see {self.folder / 'logs'}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)  # the test data goes with it: no need to drain
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def kubeconfig(self, path: Path, url: str | None = None) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "tier1",
            "clusters": [{"name": "tier1", "cluster": {"server": url or self.url,
                                                       "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": TOKEN}}],
            "contexts": [{"name": "tier1", "context": {"cluster": "tier1", "user": "admin"}}],
        }))
        return path


class Switch:
    """A TCP relay in front of the API server that can be cut: the API erroring, as a client
    sees it (connections refused and reset), while the server and the pods go on."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.up = threading.Event()
        self.up.set()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.sock.accept()
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up.clear()
        for s in self._open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._open.clear()

    def restore(self) -> None:
        self.up.set()


@dataclass
class Container:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    log: Path
    started: str
    proc: subprocess.Popen | None = None  # None while the node holds it

    def run(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT, cwd=self.cwd,
                                     start_new_session=True)

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Node:
    """A kubelet and scheduler in one: registers a Node, binds every pending pod to it, runs
    the pod's first container command as a local process with the pod's env, reports phase
    and exit code, honours deletion (SIGTERM, then the grace period), and serves the log
    endpoint the API server proxies `pods/log` to, over HTTPS at the node's kubelet port."""

    def __init__(self, api: Any, folder: Path) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.folder = folder
        self.running: dict[tuple[str, str], Container] = {}
        self.started: list[tuple[str, str]] = []  # (namespace, pod) of every container run
        # Namespaces whose started containers report Running but wait to run their command
        # (a long stage, for the tests that act while a pod runs).
        self.hold: set[str] = set()
        self.break_logs: set[str] = set()  # namespaces whose log endpoint answers 500
        self._stop = threading.Event()
        self.port = free_port()
        self._serve_logs()
        self._register()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    # -- registration and the log endpoint ------------------------------------------------
    def _register(self) -> None:
        from kubernetes import client

        capacity = {"cpu": "64", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"}
        self.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(
            name=NODE, labels={"kubernetes.io/hostname": NODE})))
        self.core.patch_node_status(NODE, {"status": {
            "capacity": capacity, "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "simulated", "lastHeartbeatTime": _now(),
                            "lastTransitionTime": _now()}]}})

    def _serve_logs(self) -> None:
        node = self
        key, cert = self_signed(self.folder, "kubelet")

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the stream does

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                parts = urlsplit(self.path)
                segments = parts.path.strip("/").split("/")
                if len(segments) != 4 or segments[0] != "containerLogs":
                    self.send_error(404)
                    return
                if segments[1] in node.break_logs:
                    self.send_error(500, "log stream broken (simulated)")
                    return
                query = parse_qs(parts.query)
                node.stream_log(self, segments[1], segments[2],
                                follow=query.get("follow", ["false"])[0] == "true",
                                timestamps=query.get("timestamps", ["false"])[0] == "true")

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._log_server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stream_log(self, handler: Any, namespace: str, name: str, *, follow: bool,
                   timestamps: bool) -> None:
        container = self.running.get((namespace, name))
        if container is None and not (self.folder / "pods" / namespace / f"{name}.log").exists():
            handler.send_error(404, "no such container")
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.end_headers()
        path = self.folder / "pods" / namespace / f"{name}.log"
        while follow and container is not None and container.proc is None:
            time.sleep(0.1)  # held: nothing written yet
        with path.open("rb") as log:
            while True:
                line = log.readline()
                if line:
                    if timestamps:
                        line = f"{_now()} ".encode() + line
                    handler.wfile.write(line)
                    handler.wfile.flush()
                    continue
                finished = container is None or container.exit_code() is not None
                if not follow or finished or namespace in self.break_logs:
                    return
                time.sleep(0.1)

    # -- the pod loop ---------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for pod in self.core.list_pod_for_all_namespaces().items:
                    self._step(pod)
            except Exception as exc:  # noqa: BLE001 - keep the node alive; the test sees pods
                print(f"node simulator: {exc!r}", file=sys.stderr)
            time.sleep(0.2)

    def _step(self, pod: Any) -> None:
        key = (pod.metadata.namespace, pod.metadata.name)
        if pod.metadata.deletion_timestamp is not None:
            self._terminate(pod, key)
        elif not pod.spec.node_name:
            self._bind(pod)
        elif key not in self.running and pod.status.phase == "Pending":
            self._start(pod, key)
        elif key in self.running:
            container = self.running[key]
            if container.proc is None and key[0] not in self.hold:
                container.run()
            self._report(pod, key)

    def _bind(self, pod: Any) -> None:
        from kubernetes import client

        body = client.V1Binding(metadata=client.V1ObjectMeta(name=pod.metadata.name),
                                target=client.V1ObjectReference(kind="Node", name=NODE))
        self.core.create_namespaced_pod_binding(pod.metadata.name, pod.metadata.namespace, body,
                                                _preload_content=False)

    def _start(self, pod: Any, key: tuple[str, str]) -> None:
        spec = pod.spec.containers[0]
        env = dict(os.environ)
        for var in spec.env or []:
            if var.value is not None:
                env[var.name] = var.value
        argv = localize([*(spec.command or []), *(spec.args or [])])
        log = self.folder / "pods" / key[0] / f"{key[1]}.log"
        container = Container(argv, env, spec.working_dir or None, log, _now())
        if key[0] not in self.hold:
            container.run()
        self.running[key] = container
        self.started.append(key)
        self._patch_status(pod, "Running", {"running": {"startedAt": container.started}},
                           ready=True)

    def _report(self, pod: Any, key: tuple[str, str]) -> None:
        container = self.running[key]
        code = container.exit_code()
        if code is None or pod.status.phase in ("Succeeded", "Failed"):
            return
        state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                "startedAt": container.started, "finishedAt": _now()}}
        self._patch_status(pod, "Succeeded" if code == 0 else "Failed", state, ready=False)

    def _patch_status(self, pod: Any, phase: str, state: dict, *, ready: bool) -> None:
        spec = pod.spec.containers[0]
        status = {"phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                  "startTime": pod.status.start_time.isoformat() if pod.status.start_time
                  else _now(),
                  "conditions": [{"type": "Ready", "status": str(ready)},
                                 {"type": "PodScheduled", "status": "True"}],
                  "containerStatuses": [{"name": spec.name, "image": spec.image,
                                         "imageID": f"sim://{spec.image}", "ready": ready,
                                         "started": "running" in state, "restartCount": 0,
                                         "state": state}]}
        self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace,
                                              {"status": status})

    def _terminate(self, pod: Any, key: tuple[str, str]) -> None:
        container = self.running.pop(key, None)
        if container is not None and container.proc and container.proc.poll() is None:
            os.killpg(container.proc.pid, signal.SIGTERM)
            grace = pod.metadata.deletion_grace_period_seconds or 0
            try:
                container.proc.wait(timeout=min(grace, 10))
            except subprocess.TimeoutExpired:
                os.killpg(container.proc.pid, signal.SIGKILL)
                container.proc.wait()
        with contextlib.suppress(Exception):  # already gone
            self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                            grace_period_seconds=0)

    def pods_started(self, namespace: str, prefix: str = "") -> list[str]:
        return [n for ns, n in self.started if ns == namespace and n.startswith(prefix)]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._log_server.shutdown()
        for container in self.running.values():
            if container.proc and container.proc.poll() is None:
                os.killpg(container.proc.pid, signal.SIGKILL)


class JobControllers:
    """mpi-operator and Kubeflow Trainer reduced to what the tests need: a job's pods from its
    templates (with the variables the real operators inject), its final condition from its
    pods, and its pods deleted with it. MPIJob workers would run sshd; here the launcher's
    hostfile lists this machine (`localhost slots=N`), so horovodrun starts every rank
    locally and the launcher runs exactly the command the manifest gives it."""

    def __init__(self, api: Any, folder: Path) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.folder = folder
        self.namespaces: set[str] = set()  # where jobs are run; elsewhere they only exist
        self._ports: dict[str, int] = {}  # a TrainJob's rendezvous port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - keep going; the tests see the jobs
                print(f"job controllers: {exc!r}", file=sys.stderr)
            time.sleep(0.3)

    def _jobs(self, kind: Any) -> list[dict]:
        return self.custom.list_cluster_custom_object(kind.group, kind.version,
                                                      kind.plural)["items"]

    def _step(self) -> None:
        from tests.kube.crds import MPIJOB, TRAINJOB

        live = set()
        for kind, pods_of, done in ((MPIJOB, self._mpijob_pods, ("Succeeded", "Failed")),
                                    (TRAINJOB, self._trainjob_pods, ("Complete", "Failed"))):
            for job in self._jobs(kind):
                namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
                if namespace not in self.namespaces:
                    continue
                live.add((namespace, name))
                conditions = job.get("status", {}).get("conditions", [])
                if any(c["type"] in done and c["status"] == "True" for c in conditions):
                    continue
                wanted = pods_of(job)
                existing = {p.metadata.name: p for p in pods(self.core, namespace,
                                                              f"aigc-sim/job={name}")}
                for pod_name, pod in wanted.items():
                    if pod_name not in existing:
                        self.core.create_namespaced_pod(namespace, pod)
                phases = [existing[n].status.phase for n in wanted if n in existing]
                if len(phases) == len(wanted) and (
                        "Failed" in phases or all(p == "Succeeded" for p in phases)):
                    self._finish(kind, namespace, name, failed="Failed" in phases, done=done)
        for pod in self.core.list_pod_for_all_namespaces(label_selector="aigc-sim/job").items:
            job = (pod.metadata.namespace, pod.metadata.labels["aigc-sim/job"])
            if job not in live:  # the garbage collector's part
                self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace)

    def _finish(self, kind: Any, namespace: str, name: str, *, failed: bool,
                done: tuple[str, str]) -> None:
        ok, bad = done
        condition = ({"type": bad, "status": "True", "reason": "BackoffLimitExceeded",
                      "message": "a pod of the job failed"} if failed else
                     {"type": ok, "status": "True", "reason": f"{kind.kind}Succeeded",
                      "message": "every pod succeeded"})
        condition["lastTransitionTime"] = _now()
        self.custom.patch_namespaced_custom_object_status(
            kind.group, kind.version, namespace, kind.plural, name,
            {"status": {"conditions": [condition]}})

    @staticmethod
    def _pod(name: str, job: str, template: dict, env: dict[str, str]) -> dict:
        spec = dict(template["spec"])
        container = dict(spec["containers"][0])
        container["env"] = [*container.get("env", []),
                            *({"name": k, "value": v} for k, v in env.items())]
        spec["containers"] = [container, *spec["containers"][1:]]
        labels = {**template.get("metadata", {}).get("labels", {}), "aigc-sim/job": job}
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": labels}, "spec": spec}

    def _mpijob_pods(self, job: dict) -> dict[str, dict]:
        name, spec = job["metadata"]["name"], job["spec"]
        slots = spec.get("slotsPerWorker", 1) * spec["mpiReplicaSpecs"]["Worker"]["replicas"]
        hostfile = self.folder / f"{name}.hostfile"
        hostfile.write_text(f"localhost slots={slots}\n")
        launcher = spec["mpiReplicaSpecs"]["Launcher"]["template"]
        env = {"OMPI_MCA_orte_default_hostfile": str(hostfile), "K_MPI_JOB_ROLE": "launcher"}
        return {f"{name}-launcher": self._pod(f"{name}-launcher", name, launcher, env)}

    @staticmethod
    def _patched(template: dict, job: dict) -> dict:
        """The torch runtime's node pod with the job's runtime patches applied, as Trainer
        does: pod fields set, the node container's mounts and env merged by name."""
        for patch in job["spec"].get("runtimePatches", []):
            runtime = patch.get("trainingRuntimeSpec", {}).get("template", {}).get("spec", {})
            for replicated in runtime.get("replicatedJobs", []):
                if replicated["name"] != "node":
                    continue
                pod = replicated.get("template", {}).get("spec", {}).get("template", {})
                labels = pod.get("metadata", {}).get("labels", {})
                template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
                fields = dict(pod.get("spec", {}))
                for change in fields.pop("containers", []):
                    for container in template["spec"]["containers"]:
                        if container["name"] == change["name"]:
                            for key in ("volumeMounts", "env"):
                                container[key] = [*container.get(key, []),
                                                  *change.get(key, [])]
                template["spec"].update(fields)
        return template

    def _trainjob_pods(self, job: dict) -> dict[str, dict]:
        name, trainer = job["metadata"]["name"], job["spec"]["trainer"]
        nodes, port = trainer["numNodes"], self._ports.setdefault(name, free_port())
        template = self._patched({"spec": {"restartPolicy": "Never", "containers": [{
            "name": "node", "image": trainer["image"], "command": trainer["command"],
            "env": trainer.get("env", []), "resources": trainer.get("resourcesPerNode", {}),
        }]}}, job)
        out = {}
        for rank in range(nodes):
            env = {"PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
                   "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1",
                   "PET_MASTER_PORT": str(port)}
            pod_name = f"{name}-node-0-{rank}"
            out[pod_name] = self._pod(pod_name, name, template, env)
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def wait_for(predicate: Any, timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pods(core: Any, namespace: str, selector: str = "") -> list[Any]:
    return core.list_namespaced_pod(namespace, label_selector=selector).items
