"""Fuzzing the whole OpenAPI spec of ``nestemb serve`` with schemathesis: >= 10,000 generated
requests (positive and negative, every operation) against a real server on loopback, with a
vectors collection and a text collection (a tiny random text model) seeded so that half the
requests with a collection name reach stored data.

Every answer is checked (:func:`harness.server.fuzz_service`): no 5xx, a documented
status, the documented content type, headers and body schema, and schema-invalid data
rejected with a 4xx. Writes the request count, the status histogram (overall and per
operation) and every failure to ``--out`` (JSON); the server log and the tiny model go under
``--work``. Heavy (minutes of CPU): run it through ``flock /tmp/nestemb-heavy.lock``.

    flock /tmp/nestemb-heavy.lock .venv/bin/python benchmarks/service_fuzz.py \\
        --requests 10000 --out docs/results/service/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the shared harnesses: tests/harness


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10_000, help="generated requests to send")
    ap.add_argument("--seed", type=int, default=0, help="first Hypothesis seed")
    ap.add_argument("--target", choices=("server", "asgi"), default="server",
                    help="server: `nestemb serve` over loopback; asgi: the app in-process")
    ap.add_argument("--no-text", action="store_true", help="no text collection (no torch)")
    ap.add_argument("--out", type=Path, default=REPO / "docs/results/service/fuzz.json")
    ap.add_argument("--work", type=Path, default=REPO / "runs/service/fuzz")
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    if args.requests < 1:
        ap.error("--requests must be positive")

    import hypothesis
    import schemathesis

    from nestemb.service import create_app
    from harness.server import FUZZ_ENCODER, fuzz_service, running_server

    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    text_model = None
    encoders: dict = {}
    if not args.no_text:
        from nestemb.text._tiny import make_tiny_model

        text_model = make_tiny_model(args.work / "tiny")
        encoders = {FUZZ_ENCODER: text_model}  # the server loads encoders from its allow-list
    t0 = time.time()
    server_log = None
    if args.target == "server":
        with running_server(args.work / "data", encoders=encoders) as (url, proc):
            report = fuzz_service(url, args.requests, seed=args.seed, text_model=text_model)
            alive = proc.poll() is None
            server_log = args.work / "server.log"
            shutil.copy(proc.log_path, server_log)
    else:
        app = create_app(args.work / "data", tune_interval=3600, encoders=encoders)
        report = fuzz_service(app, args.requests, seed=args.seed, text_model=text_model)
        alive = True
        from schemathesis.python.asgi import shutdown_lifespans

        shutdown_lifespans()
    result = {
        "what": "schemathesis fuzzing of the whole OpenAPI spec of nestemb serve",
        "command": "python benchmarks/service_fuzz.py " + " ".join(argv or sys.argv[1:]),
        "target": args.target, "seed": args.seed,
        "requests": report.requests, "seconds": report.seconds,
        "requests_per_second": round(report.requests / max(report.seconds, 1e-9), 1),
        "server_errors_5xx": report.server_errors(), "failures_count": len(report.failures),
        "server_alive_at_end": alive,
        "status_histogram": report.histogram(), "per_operation": report.statuses,
        "checks": ["not_a_server_error", "status_code_conformance", "content_type_conformance",
                   "response_headers_conformance", "response_schema_conformance",
                   "negative_data_rejection (expected statuses 400, 401, 403, 404, 405, 409, "
                   "413, 415, 422)"],
        "failures": report.failures,
        "versions": {"schemathesis": schemathesis.__version__,
                     "hypothesis": hypothesis.__version__, "python": platform.python_version()},
        "wall_seconds": round(time.time() - t0, 1),
        "server_log": str(server_log) if server_log else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{report.requests} requests in {report.seconds:.0f} s: {report.histogram()}; "
          f"5xx {report.server_errors()}, failed checks {len(report.failures)} -> {args.out}")
    return 0 if report.server_errors() == 0 and not report.failures and alive else 1


if __name__ == "__main__":
    sys.exit(main())
