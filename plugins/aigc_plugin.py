"""The project's Airflow plugin: an "MLflow run" link on every lifecycle stage task."""

from __future__ import annotations

from aigc_airflow.links import MlflowRunLink
from airflow.plugins_manager import AirflowPlugin


class AigcPlugin(AirflowPlugin):
    name = "aigc"
    # Global: TaskFlow tasks cannot declare links of their own. (The report task's "Run
    # report" link is declared by its operator and needs no registration here.)
    global_operator_extra_links = [MlflowRunLink()]
