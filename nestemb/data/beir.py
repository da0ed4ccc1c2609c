"""Readers (and the one writer) for BEIR retrieval folders: ``corpus.jsonl``, ``queries.jsonl``,
``qrels/<split>.tsv``.

Every problem in a folder (a missing file, a bad JSON line, a qrels row naming an unknown id, an
empty split) raises :class:`~nestemb.errors.NestembError` naming the file and the line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Mapping

from nestemb.data.textfile import read_lines
from nestemb.errors import NestembError


@dataclasses.dataclass
class BeirData:
    """One BEIR split: ``corpus`` maps doc id -> text (title and body joined), ``queries`` maps
    query id -> text (only the queries judged in the split), ``qrels`` maps query id ->
    {doc id: relevance}.

    Example:
        >>> d = BeirData({"d1": "a"}, {"q1": "b"}, {"q1": {"d1": 1}}, split="test")
        >>> d.pairs()
        [('b', 'a')]
    """

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str = "test"

    def pairs(self) -> list[tuple[str, str]]:
        """Training pairs (query text, relevant document text), one per positive judgment,
        in file order."""
        return [
            (self.queries[q], self.corpus[d])
            for q, docs in self.qrels.items()
            for d, rel in docs.items()
            if rel > 0
        ]


MAX_ID_CHARS = 256
"""Longest document id a corpus may hold (ids travel in URLs, payloads and result files)."""


def doc_text(title: str | None, text: str | None) -> str:
    """The one rule for a document's text: its title and body joined by a space (either may be
    empty), stripped.

    Example:
        >>> doc_text("Title", "body"), doc_text(None, "body"), doc_text("Title", "")
        ('Title body', 'body', 'Title')
    """
    return f"{title or ''} {text or ''}".strip()


@dataclasses.dataclass(frozen=True)
class CorpusRecord:
    """One record of a BEIR-style ``.jsonl`` file: its line number, ``_id``, title and text."""

    line: int
    id: str
    title: str
    text: str

    @property
    def body(self) -> str:
        """The document's text under the one rule, :func:`doc_text`."""
        return doc_text(self.title, self.text)


def read_corpus(path: str | os.PathLike, what: str = "corpus") -> list[CorpusRecord]:
    r"""Every record of a BEIR-style ``.jsonl`` file (``corpus.jsonl``, ``queries.jsonl``, a
    ``--texts`` file), checking them all first: a line that is not UTF-8 or not a JSON object,
    an ``_id`` that is missing, empty, longer than :data:`MAX_ID_CHARS` or repeated, a title or
    text that is not a string, a record with no text at all. The first problem is a
    :class:`NestembError` naming the file, the line and the ``_id`` (and how many more there
    are). Blank lines are skipped. The one corpus reader of nestemb.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "corpus.jsonl"
        >>> _ = p.write_text('{"_id": "a", "title": "T", "text": "x"}\n\n{"_id": 7, "text": "y"}\n')
        >>> [(r.line, r.id, r.body) for r in read_corpus(p)]
        [(1, 'a', 'T x'), (3, '7', 'y')]
        >>> _ = p.write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": ""}\n'
        ...                  '{"_id": "a", "text": "z"}\n')
        >>> read_corpus(p)
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: ...corpus.jsonl:2 (_id 'b'): title and text are empty (and 1 more bad record)
    """
    path = Path(path)
    if not path.is_file():
        raise NestembError(f"{what} file not found: {path}")
    records: list[CorpusRecord] = []
    first: dict[str, int] = {}
    problems: list[str] = []
    for lineno, line in enumerate(read_lines(path, what), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON ({e.msg}, column {e.colno})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{where}: not a record (a JSON object with _id, title and text)")
            continue
        rid = obj.get("_id")
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or not str(rid).strip():
            problems.append(f"{where}: _id must be a non-empty string, got {rid!r}")
            continue
        rid = str(rid)
        where = f"{where} (_id {rid!r})"
        if len(rid) > MAX_ID_CHARS:
            problems.append(f"{where}: _id is longer than {MAX_ID_CHARS} characters")
            continue
        if rid in first:  # a second text under one id would silently replace the first
            problems.append(f"{where}: duplicate _id (first on line {first[rid]})")
            continue
        first[rid] = lineno
        title, text = obj.get("title"), obj.get("text")
        if not isinstance(title, (str, type(None))) or not isinstance(text, (str, type(None))):
            problems.append(f"{where}: title and text must be strings")
            continue
        if not doc_text(title, text):
            problems.append(f"{where}: title and text are empty")
            continue
        records.append(CorpusRecord(lineno, rid, title or "", text or ""))
    if problems:
        more = len(problems) - 1
        raise NestembError(problems[0] + (f" (and {more} more bad record{'s' * (more > 1)})"
                                          if more else ""))
    if not records:
        raise NestembError(f"{what} file is empty: {path}")
    return records


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Read a qrels TSV (``query-id<TAB>corpus-id<TAB>score``, optional header line).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "test.tsv"
        >>> _ = p.write_text("query-id\\tcorpus-id\\tscore\\nq1\\td1\\t1\\n")
        >>> read_qrels(p)
        {'q1': {'d1': 1}}
    """
    path = Path(path)
    if not path.is_file():
        raise NestembError(f"BEIR qrels file not found: {path}")
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in enumerate(read_lines(path, "BEIR qrels"), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if lineno == 1 and parts[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue
        if len(parts) != 3:
            raise NestembError(
                f"{path}:{lineno}: expected 3 tab-separated fields "
                f"(query-id, corpus-id, score), got {len(parts)}"
            )
        try:
            score = int(float(parts[2]))
        except (ValueError, OverflowError):
            raise NestembError(f"{path}:{lineno}: score {parts[2]!r} is not a number") from None
        qrels.setdefault(parts[0].strip(), {})[parts[1].strip()] = score
    return qrels


def load_beir(directory: str | os.PathLike, split: str = "test") -> BeirData:
    """Load a BEIR folder for one qrels split, checking every id the qrels name.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "qrels").mkdir()
        >>> _ = (d / "corpus.jsonl").write_text('{"_id": "d1", "title": "T", "text": "body"}\\n')
        >>> _ = (d / "queries.jsonl").write_text('{"_id": "q1", "text": "claim"}\\n')
        >>> _ = (d / "qrels" / "test.tsv").write_text("query-id\\tcorpus-id\\tscore\\nq1\\td1\\t1\\n")
        >>> data = load_beir(d)
        >>> data.corpus, data.queries
        ({'d1': 'T body'}, {'q1': 'claim'})
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NestembError(f"BEIR folder not found: {directory}")
    qrels_path = directory / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (directory / "qrels").glob("*.tsv"))
        raise NestembError(f"BEIR qrels file not found: {qrels_path} (splits present: {have})")
    corpus = {r.id: r.body for r in read_corpus(directory / "corpus.jsonl", "BEIR corpus")}
    queries = {r.id: r.body for r in read_corpus(directory / "queries.jsonl", "BEIR queries")}
    qrels = read_qrels(qrels_path)
    if not any(rel > 0 for docs in qrels.values() for rel in docs.values()):
        raise NestembError(f"BEIR split {split!r} is empty: {qrels_path} has no relevant pairs")
    # second pass for line numbers of unknown ids (only reached on error)
    unknown_q = [q for q in qrels if q not in queries]
    unknown_d = [d for docs in qrels.values() for d in docs if d not in corpus]
    if unknown_q or unknown_d:
        bad_q, bad_d = set(unknown_q), set(unknown_d)
        for lineno, line in enumerate(read_lines(qrels_path, "BEIR qrels"), 1):
            parts = line.split("\t")
            if len(parts) == 3 and parts[0].strip() in bad_q:
                raise NestembError(
                    f"{qrels_path}:{lineno}: query id {parts[0].strip()!r} is not in "
                    f"{directory / 'queries.jsonl'}"
                )
            if len(parts) == 3 and parts[1].strip() in bad_d:
                raise NestembError(
                    f"{qrels_path}:{lineno}: corpus id {parts[1].strip()!r} is not in "
                    f"{directory / 'corpus.jsonl'}"
                )
    return BeirData(corpus, {q: queries[q] for q in qrels}, qrels, split=split)


def beir_corpus_texts(directory: str | os.PathLike) -> list[str]:
    """All document texts of a BEIR folder (unlabeled text, e.g. for similarity distillation).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "x"}\\n')
        >>> beir_corpus_texts(d)
        ['x']
    """
    return [r.body for r in read_corpus(Path(directory) / "corpus.jsonl", "BEIR corpus")]


def write_beir(
    directory: str | os.PathLike,
    corpus: Iterable[tuple[str, str, str]],
    queries: Iterable[tuple[str, str]],
    qrels: Mapping[str, Mapping[str, int]],
    split: str = "test",
) -> None:
    """Write a BEIR folder that :func:`load_beir` reads: ``corpus.jsonl`` from (id, title,
    text) rows, ``queries.jsonl`` from (id, text) rows, ``qrels/<split>.tsv`` with its header
    line. UTF-8, one JSON object a line, ids as given (the caller checks them; the reader
    checks them again). Writes into ``directory`` as it is: wrap the call in
    :func:`nestemb.io.atomic_dir` for an all-or-nothing folder.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> write_beir(d, [("d1", "Café", "a body")], [("q1", "claim")], {"q1": {"d1": 1}})
        >>> data = load_beir(d)
        >>> data.corpus, data.queries, data.qrels
        ({'d1': 'Café a body'}, {'q1': 'claim'}, {'q1': {'d1': 1}})
    """
    directory = Path(directory)
    (directory / "qrels").mkdir(parents=True, exist_ok=True)
    with open(directory / "corpus.jsonl", "w", encoding="utf-8") as f:
        for doc_id, title, text in corpus:
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text},
                               ensure_ascii=False) + "\n")
    with open(directory / "queries.jsonl", "w", encoding="utf-8") as f:
        for query_id, text in queries:
            f.write(json.dumps({"_id": query_id, "text": text}, ensure_ascii=False) + "\n")
    with open(directory / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for query_id, docs in qrels.items():
            for doc_id, score in docs.items():
                f.write(f"{query_id}\t{doc_id}\t{int(score)}\n")
