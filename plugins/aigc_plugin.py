"""The project's Airflow plugin: an "MLflow run" link on every lifecycle stage task, and a
size limit on the REST API's request bodies."""

from __future__ import annotations

from aigc_airflow.bodylimit import BodyLimit, max_body_bytes
from aigc_airflow.links import MlflowRunLink
from airflow.plugins_manager import AirflowPlugin


class AigcPlugin(AirflowPlugin):
    name = "aigc"
    # Global: TaskFlow tasks cannot declare links of their own. (The report task's "Run
    # report" link is declared by its operator and needs no registration here.)
    global_operator_extra_links = [MlflowRunLink()]
    fastapi_root_middlewares = [{"name": "aigc-body-limit", "middleware": BodyLimit,
                                 "args": [], "kwargs": {"max_bytes": max_body_bytes()}}]
