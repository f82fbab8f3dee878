"""Airflow glue: lifecycle stages as retryable tasks, with Params from the one config schema."""

from aigc_airflow.stages import config_params, stage_task

__all__ = ["config_params", "stage_task"]
