"""Harnesses shared by the tests and the benchmarks (never imported by the package).

- ``server``: a real ``nestemb serve`` on a free loopback port, raw HTTP exchanges, direct ASGI
  calls, a snapshot of what is stored, and the schemathesis fuzzer of the HTTP API.
- ``crash``: the crash harness (write while the server is SIGKILLed, check every acknowledged
  write) and the restartable server it drives.
- ``migration_crash``: the crash harness of live migrations (SIGKILLs in every phase of
  migrations to a new model, each driven to its end; every acknowledged write checked in both
  spaces).

Tests import them as ``harness.server`` / ``harness.crash`` (pytest puts ``tests/`` on the
path); benchmarks put ``tests/`` on ``sys.path`` first.
"""
