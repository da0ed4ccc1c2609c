"""Readers for BEIR retrieval folders: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

Every problem in a folder (a missing file, a bad JSON line, a qrels row naming an unknown id, an
empty split) raises :class:`~nestemb.errors.NestembError` naming the file and the line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

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


def _read_jsonl(path: Path, what: str, with_title: bool) -> dict[str, str]:
    if not path.is_file():
        raise NestembError(f"BEIR {what} file not found: {path}")
    out: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for lineno, line in enumerate(read_lines(path, f"BEIR {what}"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise NestembError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or "_id" not in obj:
            raise NestembError(f"{path}:{lineno}: a JSON object with an '_id' is expected")
        text = obj.get("text")
        if not isinstance(text, str):
            raise NestembError(f"{path}:{lineno}: field 'text' is missing or not a string")
        title = obj.get("title") or ""
        if with_title and title:
            text = f"{title} {text}" if text else str(title)
        doc_id = str(obj["_id"])
        if doc_id in line_of:  # a second text under one id would silently replace the first
            raise NestembError(f"{path}:{lineno}: duplicate _id {doc_id!r} (first on line "
                               f"{line_of[doc_id]}): every _id must be unique")
        line_of[doc_id] = lineno
        out[doc_id] = text
    if not out:
        raise NestembError(f"BEIR {what} file is empty: {path}")
    return out


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
    corpus = _read_jsonl(directory / "corpus.jsonl", "corpus", with_title=True)
    queries = _read_jsonl(directory / "queries.jsonl", "queries", with_title=False)
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
    return list(_read_jsonl(Path(directory) / "corpus.jsonl", "corpus", with_title=True).values())
