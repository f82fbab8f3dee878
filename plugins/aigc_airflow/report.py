"""The run report task, and the extra link that opens its page from the Airflow UI."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, BaseOperatorLink


class RunReportLink(BaseOperatorLink):
    """'Run report' on the report task: the HTML page in the run's MLflow artifacts."""

    name = "Run report"

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        # Evaluated when the task finishes, on the operator that just ran; stored in XCom.
        return getattr(operator, "report_url", "")


class ReportOperator(BaseOperator):
    """Runs `python -m tasks report` after every other task, whatever their outcome."""

    operator_extra_links = (RunReportLink(),)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(task_id="report", trigger_rule="all_done", **kwargs)
        self.report_url = ""

    def execute(self, context: Any) -> dict[str, Any]:
        from tasks.config import LifecycleConfig
        from tasks.runner import run_process
        from tasks.stage import StageContext

        dag_run = context["dag_run"]
        # The report reads what the stages left on disk; it needs no run knobs, so a run
        # whose conf was rejected still gets its report.
        ctx = StageContext(stage="report", dag_id=dag_run.dag_id, run_id=dag_run.run_id,
                           config=LifecycleConfig())
        result = run_process(ctx)
        self.report_url = result["url"]
        return result
