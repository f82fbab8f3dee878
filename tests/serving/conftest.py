"""One model server for every test module of this package (each starts in ~20 s)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.serving.fixtures import Server, start_server


@pytest.fixture(scope="package")
def server(registry, tmp_path_factory) -> Iterator[Server]:
    yield from start_server(registry, tmp_path_factory.mktemp("server"))
