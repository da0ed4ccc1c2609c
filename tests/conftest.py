"""Shared fixtures: a CLI runner that goes through ``nestemb.cli.main`` (so exit codes and error
messages are exactly what a user sees), and paths to the shared data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NESTEMB_SHARED_DATA", REPO.parent / "shared" / "data"))


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, err={self.err[-500:]!r})"


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``nestemb ARGS...`` in-process; returns a :class:`CliResult`."""
    from nestemb.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["nestemb", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random sentence-transformers model folder (32-d), e.g. a server-side encoder."""
    from nestemb.text._tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


ELASTIC_WIDTHS = (0.25, 0.5, 1.0)


@pytest.fixture(scope="session")
def elastic_model(tmp_path_factory, tiny_model) -> Path:
    """The tiny text model with trained widths :data:`ELASTIC_WIDTHS` recorded in its manifest
    (``extra.widths``, as ``TextTrainConfig.widths`` writes it); its slices are untrained, which
    is all the service's tests need: it must encode at the width asked for."""
    from nestemb.text.encoder import load_text_model, save_text_model

    enc = load_text_model(tiny_model)
    man = enc.manifest
    man.extra["widths"] = list(ELASTIC_WIDTHS)
    out = tmp_path_factory.mktemp("elastic") / "model"
    save_text_model(enc, out, man)
    assert load_text_model(out).widths == ELASTIC_WIDTHS
    return out


@pytest.fixture(scope="session")
def matryoshka_data():
    """``make(n, n_queries)`` -> ``(X, Q, exact_search(X, Q, 10))``: synthetic 64-d Matryoshka
    vectors (nesting 8, 16, 32, 64) shared by the index tests; each size is made once."""
    from functools import lru_cache

    from nestemb.index import exact_search, synthetic_matryoshka

    @lru_cache(maxsize=None)
    def make(n: int, n_queries: int):
        X = synthetic_matryoshka(n, 64, seed=0, decay=0.05)
        Q = synthetic_matryoshka(n_queries, 64, seed=1, decay=0.05)
        return X, Q, exact_search(X, Q, 10)

    return make
