"""The feedback store's database: SQLite, and PostgreSQL on localhost (CI has it)."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import require_service

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield str(tmp_path / "feedback.db")
        return
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import psycopg2

    name = f"aigc_test_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        admin.cursor().execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


