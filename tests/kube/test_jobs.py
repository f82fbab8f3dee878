"""Tier 1: multi-node training as Kubeflow jobs through Airflow against a real kube-apiserver.

The job controllers are the tests' (cluster.JobControllers): they make the pods the real
operators would make, with the variables those inject; everything the project does — the
manifest, its submission, the watch, the result — is the real thing.
"""

from __future__ import annotations

from tests.kube.conftest import outcome
from tests.kube.crds import MPIJOB, TRAINJOB


def _ok(proc) -> None:
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-4000:])


def _jobs(cluster, kind, out) -> list[dict]:
    return cluster.custom.list_namespaced_custom_object(
        kind.group, kind.version, out.namespace, kind.plural)["items"]


def _ranks(out) -> list[str]:
    return sorted(p.name for p in (out.stage_dir / "ranks").iterdir())


def test_horovod_across_nodes_is_an_mpijob_whose_launcher_runs_the_stage(cluster, scenarios):
    out = outcome(scenarios, "mpijob")
    _ok(out.first)
    # The launcher ran `python -m tasks train`: both ranks' results collected and compared.
    assert out.result["launcher"] == "horovod" and out.recorded == out.result
    assert _ranks(out) == ["rank-0.json", "rank-1.json"]
    [job] = _jobs(cluster, MPIJOB, out)
    launcher = f"{job['metadata']['name']}-launcher"
    assert job["status"]["conditions"][-1]["type"] == "Succeeded"
    # Retried after its job succeeded: the result stands, no job or pod is added.
    _ok(out.retry)
    assert "ran this very payload to the end" in out.retry.stdout + out.retry.stderr
    assert out.pods_started == [launcher]


def test_ddp_across_nodes_is_a_trainjob_watched_by_the_trigger(cluster, scenarios):
    out = outcome(scenarios, "trainjob")
    _ok(out.first)
    text = out.first.stdout + out.first.stderr
    assert "Pausing task as DEFERRED" in text and "Trigger completed" in text
    assert out.result["launcher"] == "ddp" and out.recorded == out.result
    [job] = _jobs(cluster, TRAINJOB, out)
    name = job["metadata"]["name"]
    # Two nodes of one torchrun job: node 0 collected both ranks, node 1 wrote no result.
    assert out.pods_started == [f"{name}-node-0-0", f"{name}-node-0-1"]
    # The runtime patch put the artifact volume, account and grace period on the nodes.
    node = cluster.core.read_namespaced_pod(f"{name}-node-0-1", out.namespace)
    assert node.spec.service_account_name == "aigc-trainer"
    assert node.spec.termination_grace_period_seconds == 5
    assert [v.persistent_volume_claim.claim_name for v in node.spec.volumes
            if v.persistent_volume_claim] == ["aigc-artifacts"]
    assert out.result["workers"] == 2 and _ranks(out) == ["rank-0.json", "rank-1.json"]
    assert job["status"]["conditions"][-1]["type"] == "Complete"
