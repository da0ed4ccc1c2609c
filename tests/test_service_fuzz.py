"""Property-based fuzzing of the whole OpenAPI spec of the service (schemathesis): a bounded
run over the ASGI app with seeded collections (vectors, and text with a tiny model), asserting
no 5xx and every answer conforming to the spec; and a check that the harness does catch a
server error. The long run (>= 10,000 requests against `nestemb serve`) is
``benchmarks/service_fuzz.py``."""

from __future__ import annotations

import json

import pytest

from nestemb.service import Limits, create_app
from nestemb.service.collection import LiveCollection
from harness.server import FUZZ_ENCODER, fuzz_service

LIMITS = Limits(max_body_bytes=1 << 20, max_batch=64, max_queries=16, max_text_chars=2000)
OPERATIONS = {
    "GET /healthz", "GET /collections", "PUT /collections/{name}", "GET /collections/{name}",
    "DELETE /collections/{name}", "PUT /collections/{name}/points",
    "GET /collections/{name}/points/{point_id}", "POST /collections/{name}/points/delete",
    "POST /collections/{name}/search", "POST /collections/{name}/search/batch",
    "POST /collections/{name}/widths",
    "PUT /collections/{name}/migration", "GET /collections/{name}/migration",
    "POST /collections/{name}/migration/pause", "POST /collections/{name}/migration/resume",
    "POST /collections/{name}/migration/finish", "POST /collections/{name}/migration/cancel",
    "GET /collections/{name}/migration/queue", "PUT /collections/{name}/migration/vectors"}
"""Every operation of the spec (the migration routes are mostly refused here: a collection the
fuzzer fills rarely has the points a migration needs; tests/test_service_migration.py runs
them)."""
FUZZ_REQUESTS = 900  # enough for each data route to reach real data at least 3 times


@pytest.fixture
def stop_lifespans():
    """schemathesis runs each app's lifespan once and keeps it; stop them after the test."""
    yield
    from schemathesis.python.asgi import shutdown_lifespans

    shutdown_lifespans()


def test_fuzz_the_whole_spec(tmp_path, tiny_model, stop_lifespans):
    app = create_app(tmp_path / "data", limits=LIMITS, tune_interval=3600,
                     encoders={FUZZ_ENCODER: tiny_model})
    report = fuzz_service(app, FUZZ_REQUESTS, seed=12, text_model=tiny_model)
    assert report.requests == FUZZ_REQUESTS
    assert report.failures == [], json.dumps(report.failures[:3], indent=1)[:6000]
    assert report.server_errors() == 0
    assert set(report.statuses) == OPERATIONS
    # the generated requests reached real data, not only the validation layer
    for op in ("PUT /collections/{name}/points", "POST /collections/{name}/search",
               "POST /collections/{name}/search/batch", "POST /collections/{name}/points/delete",
               "GET /collections/{name}/points/{point_id}"):
        assert report.statuses[op].get("200", 0) >= 3, (op, report.statuses[op])
    for op in ("PUT /collections/{name}", "DELETE /collections/{name}"):
        assert report.statuses[op].get("200", 0) >= 1, (op, report.statuses[op])
    hist = report.histogram()
    assert set(hist) <= {"200", "400", "404", "409", "413", "415", "422"}, hist
    assert hist["422"] > 0 and hist["400"] > 0  # negative cases were sent, and refused


def test_fuzz_reports_a_server_error(tmp_path, monkeypatch, stop_lifespans):
    """The harness can fail: a search that raises is reported as a 5xx / failed check."""
    def broken(self, *a, **kw):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(LiveCollection, "search", broken)
    app = create_app(tmp_path / "data", limits=LIMITS, tune_interval=3600)
    report = fuzz_service(app, 300, seed=3)
    searched = report.statuses.get("POST /collections/{name}/search", {})
    assert any(s.startswith("5") for s in searched), searched
    assert report.server_errors() > 0 and report.failures
    assert any("POST /collections/{name}/search" == f["operation"] for f in report.failures)
