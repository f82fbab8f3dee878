"""A stage as a Kubernetes task: a KubernetesPodOperator pod, or a Kubeflow job for nodes > 1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodLaunchFailedException
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from tasks.errors import EXIT_BAD_INPUT, BadInput
from tasks.kube import (
    MPIJOB,
    TRAINJOB,
    JobKind,
    KubernetesSettings,
    container_env,
    job_for,
    job_outcome,
    labels,
    pod_command,
    pod_spec,
)
from tasks.stage import RESULT_FILE, StageContext
from tasks.train.oom import after_oom, note_oom

ACTIVE = ("Pending", "Running")
# On a job: the hash of the manifest it was made from. A retry takes a finished job's result
# only when it would submit the very same job (same image, settings, payload path).
MANIFEST_ANNOTATION = "aigc/manifest-sha256"
# A watch outlives the task's own deadline by this much before Airflow's backstop fires.
DEFER_SLACK = timedelta(minutes=2)
KINDS = {k.kind: k for k in (MPIJOB, TRAINJOB)}


class StageResultMissing(AirflowException):
    """The pod or job left no result.json: nothing to hand downstream."""


class StagePodOperator(KubernetesPodOperator):
    """`python -m tasks <stage>` in the trainer image, with the payload/result contract of the
    local runner: the payload is written before the pod starts, the stage's result.json is
    the task's XCom.

    Retries never start a second pod or job for the same stage: an unfinished one is
    reattached (also after the task's watch itself failed); one that finished this very
    payload while no task watched it gives its result. Bad input (a config error, a stage
    exiting with EXIT_BAD_INPUT) fails the task without retries, as locally.
    """

    template_fields = (*KubernetesPodOperator.template_fields, "stage_inputs")

    def __init__(self, *, stage: str, stage_inputs: dict[str, Any] | None = None,
                 settings: KubernetesSettings, **kwargs: Any) -> None:
        super().__init__(
            task_id=stage,
            kubernetes_conn_id=settings.kubernetes_conn_id,
            namespace=settings.namespace,
            image=settings.image,
            name=f"aigc-{stage}",
            durable=True,
            on_finish_action=settings.on_finish_action,
            on_kill_action="delete_pod",
            termination_grace_period=settings.termination_grace_seconds,
            startup_timeout_seconds=settings.startup_timeout_seconds,
            schedule_timeout_seconds=settings.schedule_timeout_seconds,
            get_logs=True,
            log_events_on_failure=True,
            deferrable=settings.deferrable,
            # The result travels as result.json on the artifact volume, not by a sidecar.
            do_xcom_push=False,
            **kwargs,
        )
        self.stage = stage
        self.stage_inputs = stage_inputs or {}
        self.settings = settings
        self._stop_pod = False
        self._job: tuple[JobKind, str] | None = None

    # -- the stage contract ------------------------------------------------------------
    def _stage_context(self, context: Any) -> StageContext:
        from aigc_airflow.stages import stage_context

        try:
            return stage_context(self.stage, context, dict(self.stage_inputs))
        except BadInput as exc:
            # Bad config fails the same way on every retry: fail now, say why.
            raise AirflowFailException(str(exc)) from exc

    def _finish(self, ctx: StageContext, context: Any) -> dict[str, Any]:
        path = ctx.stage_dir / RESULT_FILE
        if not path.exists():
            raise StageResultMissing(f"stage {self.stage}: no {path} — the pod or job did not "
                                     "finish its stage (see its log above)")
        return self._push(ctx.read_result(), context)

    @staticmethod
    def _push(result: dict[str, Any], context: Any) -> dict[str, Any]:
        # do_xcom_push is off for the operator's sidecar; the stage's result is the XCom.
        context["ti"].xcom_push(key="return_value", value=result)
        return result

    def render(self, ctx: StageContext, context: Any = None) -> Any:
        """The stage's pod as this operator builds it: the same argv and env as locally, the
        artifact volume, resources and placement from the cluster settings."""
        self.labels = labels(ctx)
        self.pod_template_dict = {"apiVersion": "v1", "kind": "Pod", "metadata": {},
                                  "spec": pod_spec(self.settings, ctx, self.base_container_name,
                                                   pod_command(ctx), container_env(ctx))}
        return self.build_pod_request_obj(context, dry_run=context is None)

    def execute(self, context: Any) -> dict[str, Any] | None:
        ctx = self._stage_context(context)
        if self.stage == "train" and ctx.config.nodes > 1:
            return self._run_job(ctx, context)
        self.pod_request_obj = self.render(ctx, context)
        earlier = self.find_pod(self.namespace, context=context)
        phase = earlier.status.phase if earlier is not None and earlier.status else None
        if phase in ACTIVE:
            self.log.info("pod %s of an earlier try is %s: reattaching, not starting another",
                          earlier.metadata.name, phase)
            # Watched from here on: the provider would look it up again, and by then it may
            # have finished and be replaced by a new pod.
            self.pod = earlier
        elif phase == "Succeeded" and (result := ctx.earlier_result()) is not None:
            self.log.info("pod %s of an earlier try ran this very payload to the end while no "
                          "task watched it: its result is this task's", earlier.metadata.name)
            self.process_pod_deletion(earlier, reraise=False)
            return self._push(result, context)
        else:
            if earlier is not None:  # ended without a result for this payload: not reused
                self.patch_already_checked(earlier, reraise=False)
            ctx.hand_off()
        super().execute(context)  # defers when deferrable: trigger_reentry resumes
        return self._finish(ctx, context)

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        # Timed out (the task's deadline, or a pod that never started): the pod goes too.
        self._stop_pod = event.get("status") == "timeout"
        super().trigger_reentry(context, event)
        return self._finish(self._stage_context(context), context)

    # -- monitoring failures never duplicate a training --------------------------------
    def await_pod_start(self, pod: Any) -> None:
        try:
            super().await_pod_start(pod)
        except PodLaunchFailedException:
            # Never scheduled or never started (image, quota): a retry starts afresh.
            self._stop_pod = True
            raise

    def await_pod_completion(self, pod: Any) -> None:
        try:
            super().await_pod_completion(pod)
        except Exception as exc:  # the log stream broke (API, proxy, kubelet): not the pod
            self.log.warning("reading the pod's log failed (%s); waiting for it by its status",
                             exc)
            self.pod_manager.await_container_completion(
                pod=pod, container_name=self.base_container_name,
                polling_time=self.base_container_status_polling_interval)

    def cleanup(self, pod: Any, remote_pod: Any, xcom_result: dict | None = None,
                context: Any = None) -> None:
        if self._killed or not remote_pod:
            return super().cleanup(pod, remote_pod, xcom_result, context)
        try:
            # One read, no retry loop: the watch has just spent its retries on this API.
            current = self.client.read_namespaced_pod(remote_pod.metadata.name,
                                                      remote_pod.metadata.namespace)
        except Exception as exc:  # noqa: BLE001 - cannot tell: leave it for the retry
            self.log.warning("cannot read pod %s (%s): left for the retry to reattach",
                             remote_pod.metadata.name, exc)
            return None
        if current.status and current.status.phase in ACTIVE:
            if not self._stop_pod:
                # The watch ended before the pod did: upstream would label it checked and
                # the retry would start a second pod training the same stage.
                self.log.warning("pod %s is still %s but watching it failed: left unlabelled "
                                 "for the retry to reattach", current.metadata.name,
                                 current.status.phase)
                return None
            self.log.info("deleting pod %s (%s)", current.metadata.name, current.status.phase)
            self.pod_manager.delete_pod(current)
        if self.stage == "train" and _oom_killed(current, self.base_container_name):
            # The whole container went, so no process in it could say so: the retry reads
            # this note and splits the batch in smaller micro-batches.
            ctx = self._stage_context(context)
            note_oom(ctx.stage_dir, after_oom(ctx.stage_dir, ctx.config),
                     f"pod {current.metadata.name}: container OOMKilled")
        if _exit_code(current, self.base_container_name) == EXIT_BAD_INPUT:
            self.patch_already_checked(current, reraise=False)
            self.process_pod_deletion(current, reraise=False)
            raise AirflowFailException(f"stage {self.stage} refused its input (exit code "
                                       f"{EXIT_BAD_INPUT}); a retry would fail the same way: "
                                       "see the pod's log above")
        return super().cleanup(pod, current, xcom_result, context)

    # -- nodes > 1: a Kubeflow job -----------------------------------------------------
    def _run_job(self, ctx: StageContext, context: Any) -> dict[str, Any] | None:
        kind, manifest = job_for(ctx, self.settings)
        name = manifest["metadata"]["name"]
        self._job = (kind, name)
        api = self.hook.custom_object_client
        manifest["metadata"]["annotations"] = {MANIFEST_ANNOTATION: _digest(manifest)}
        earlier = _get_job(api, kind, self.namespace, name)
        outcome = job_outcome(kind, earlier) if earlier else None
        same = earlier is not None and earlier["metadata"].get("annotations", {}).get(
            MANIFEST_ANNOTATION) == manifest["metadata"]["annotations"][MANIFEST_ANNOTATION]
        if earlier and outcome is None:
            self.log.info("%s %s of an earlier try is running: watching it", kind.kind, name)
        elif same and outcome == "succeeded" and (result := ctx.earlier_result()) is not None:
            self.log.info("%s %s of an earlier try ran this very payload to the end: its "
                          "result is this task's", kind.kind, name)
            return self._push(result, context)
        else:
            if earlier:
                self.log.info("%s %s of an earlier try ended (%s)%s: replacing it", kind.kind,
                              name, outcome, "" if same else " from another manifest")
                _delete_job(api, self.client, kind, self.namespace, name, wait=True)
            # The stage clears the ranks' files of earlier attempts when it starts.
            ctx.hand_off()
            api.create_namespaced_custom_object(namespace=self.namespace, body=manifest,
                                                **kind.api)
            self.log.info("submitted %s %s/%s", kind.kind, self.namespace, name)
        trigger = JobTrigger(kind=kind.kind, name=name, namespace=self.namespace,
                             kubernetes_conn_id=self.kubernetes_conn_id,
                             poll_seconds=self.settings.job_poll_seconds,
                             deadline=self._deadline(context))
        if self.deferrable:
            self.defer(trigger=trigger, method_name="job_reentry",
                       timeout=timedelta(seconds=max(0.0, trigger.deadline - time.time()))
                       + DEFER_SLACK if trigger.deadline else None)
        return self.job_reentry(context, asyncio.run(_first_event(trigger)))

    def _deadline(self, context: Any) -> float:
        if self.execution_timeout is None:
            return 0.0
        return context["ti"].start_date.timestamp() + self.execution_timeout.total_seconds()

    def job_reentry(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        kind, name = KINDS[event["kind"]], event["name"]
        self._job = (kind, name)
        if event["status"] == "succeeded":
            return self._finish(self._stage_context(context), context)
        if event["status"] == "timeout":
            _delete_job(self.hook.custom_object_client, self.client, kind, event["namespace"],
                        name)
        raise AirflowException(f"{kind.kind} {event['namespace']}/{name} "
                               f"{event['message']}")

    def on_kill(self) -> None:
        if self._job is None:
            return super().on_kill()
        kind, name = self._job
        try:
            _delete_job(self.hook.custom_object_client, self.client, kind, self.namespace, name)
        except Exception:  # noqa: BLE001 - best effort; the log says which job remains
            self.log.exception("could not delete %s %s", kind.kind, name)
        return None


def _get_job(api: Any, kind: JobKind, namespace: str, name: str) -> dict | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(namespace=namespace, name=name, **kind.api)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _terminated(pod: Any, container: str) -> Any:
    for status in (pod.status.container_statuses or []) if pod.status else []:
        if status.name == container and status.state and status.state.terminated:
            return status.state.terminated
    return None


def _exit_code(pod: Any, container: str) -> int | None:
    ended = _terminated(pod, container)
    return ended.exit_code if ended else None


def _oom_killed(pod: Any, container: str) -> bool:
    """The kubelet's word that the container died of memory (a plain SIGKILL says Error)."""
    ended = _terminated(pod, container)
    return bool(ended and ended.reason == "OOMKilled")


def _digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _delete_job(api: Any, core: Any, kind: JobKind, namespace: str, name: str, *,
                wait: bool = False) -> None:
    """Delete the job; its pods follow through their owner references. With wait, return
    once the job and its pods are gone: a replacement must not meet its predecessor's pods
    (same names, same stage folder)."""
    from kubernetes.client.exceptions import ApiException

    try:
        api.delete_namespaced_custom_object(namespace=namespace, name=name,
                                            propagation_policy="Background", **kind.api)
    except ApiException as exc:
        if exc.status != 404:
            raise
    deadline = time.monotonic() + 300
    while wait and (_get_job(api, kind, namespace, name) is not None or any(
            p.metadata.name.startswith(f"{name}-")
            for p in core.list_namespaced_pod(namespace).items)):
        if time.monotonic() > deadline:
            raise AirflowException(f"{kind.kind} {namespace}/{name} or its pods are still "
                                   "being deleted")
        time.sleep(1)


async def _first_event(trigger: BaseTrigger) -> dict[str, Any]:
    async for event in trigger.run():
        return event.payload
    raise AirflowException("the job watch ended without an outcome")


class JobTrigger(BaseTrigger):
    """Watches a Kubeflow job (MPIJob, TrainJob) in the triggerer until its final condition,
    or until the task's deadline; deletes it when the task is killed while deferred."""

    def __init__(self, *, kind: str, name: str, namespace: str, kubernetes_conn_id: str,
                 poll_seconds: float, deadline: float = 0.0) -> None:
        super().__init__()
        self.kind, self.name, self.namespace = kind, name, namespace
        self.kubernetes_conn_id = kubernetes_conn_id
        self.poll_seconds, self.deadline = poll_seconds, deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"kind": self.kind, "name": self.name, "namespace": self.namespace,
                 "kubernetes_conn_id": self.kubernetes_conn_id,
                 "poll_seconds": self.poll_seconds, "deadline": self.deadline})

    def _event(self, status: str, message: str) -> TriggerEvent:
        return TriggerEvent({"status": status, "message": message, "kind": self.kind,
                             "name": self.name, "namespace": self.namespace})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from aiohttp import ClientError
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        kind = KINDS[self.kind]
        async with AsyncKubernetesHook(conn_id=self.kubernetes_conn_id).get_conn() as conn:
            api = client.CustomObjectsApi(conn)
            while True:
                if self.deadline and time.time() >= self.deadline:
                    yield self._event("timeout", "reached the task's execution_timeout")
                    return
                try:
                    job = await api.get_namespaced_custom_object(
                        namespace=self.namespace, name=self.name, **kind.api)
                except (ApiException, ClientError, OSError, TimeoutError) as exc:
                    if getattr(exc, "status", None) == 404:
                        yield self._event("failed", "was deleted before it finished")
                        return
                    # A flaky API is not the job's failure: keep watching until the deadline.
                    self.log.warning("reading %s %s failed: %s", self.kind, self.name, exc)
                else:
                    outcome = job_outcome(kind, job)
                    if outcome == "succeeded":
                        yield self._event("succeeded", "succeeded")
                        return
                    if outcome:
                        yield self._event("failed", outcome)
                        return
                await asyncio.sleep(self.poll_seconds)

    async def on_kill(self) -> None:
        """Airflow 3.3 calls this when a user kills the deferred task (mark failed, clear);
        not on the defer timeout, which is why the watch has a deadline of its own."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio import client

        kind = KINDS[self.kind]
        async with AsyncKubernetesHook(conn_id=self.kubernetes_conn_id).get_conn() as conn:
            await client.CustomObjectsApi(conn).delete_namespaced_custom_object(
                namespace=self.namespace, name=self.name, propagation_policy="Background",
                **kind.api)
