"""Registers the project's operator extra link with Airflow (the UI resolves it by class)."""

from __future__ import annotations

from aigc_airflow.report import RunReportLink
from airflow.plugins_manager import AirflowPlugin


class AigcPlugin(AirflowPlugin):
    name = "aigc"
    operator_extra_links = [RunReportLink()]
