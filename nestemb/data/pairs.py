"""Readers for sentence-pair data: STS-B TSV, SNLI triplets, MRPC paraphrases, generic pairs.

Each reader returns plain Python lists; every malformed row raises
:class:`~nestemb.errors.NestembError` naming the file and line.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from nestemb.data.textfile import read_text
from nestemb.errors import NestembError


def _open_lines(path: str | os.PathLike, what: str):
    # read_text drops a BOM and names the line of any non-UTF-8 byte; splitlines() ends lines
    # at CRLF, LF or CR alike
    return Path(path), read_text(path, what).splitlines()


def read_sts(path: str | os.PathLike) -> list[tuple[str, str, float]]:
    """Read an STS-B TSV: score in column 5 (index 4), sentences in columns 6 and 7; rows may
    carry extra trailing fields. Split on tabs only (no CSV quoting).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "sts.csv"
        >>> _ = p.write_text("g\\tf\\ty\\t1\\t4.5\\tA cat.\\tA cat sits.\\textra\\n")
        >>> read_sts(p)
        [('A cat.', 'A cat sits.', 4.5)]
    """
    path, lines = _open_lines(path, "STS")
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 7:
            raise NestembError(
                f"{path}:{lineno}: expected at least 7 tab-separated fields, got {len(parts)}"
            )
        try:
            score = float(parts[4])
        except ValueError:
            raise NestembError(f"{path}:{lineno}: score {parts[4]!r} is not a number") from None
        if not math.isfinite(score):  # NaN, inf
            raise NestembError(f"{path}:{lineno}: score {parts[4]!r} is not a finite number")
        rows.append((parts[5], parts[6], score))
    if not rows:
        raise NestembError(f"STS file has no rows: {path}")
    return rows


def read_nli_triplets(
    directory: str | os.PathLike, splits: tuple[str, ...] = ("dev", "test")
) -> list[tuple[str, str, str]]:
    """SNLI (``s1.<split>``, ``s2.<split>``, ``labels.<split>``) as (premise, entailed
    hypothesis, contradicting hypothesis) triplets; each entailment of a premise is paired with a
    contradiction of the same premise. Splits whose files are absent are skipped.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "s1.dev").write_text("P .\\nP .\\n")
        >>> _ = (d / "s2.dev").write_text("E .\\nC .\\n")
        >>> _ = (d / "labels.dev").write_text("entailment\\ncontradiction\\n")
        >>> read_nli_triplets(d)
        [('P .', 'E .', 'C .')]
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise NestembError(f"NLI folder not found: {directory}")
    out: list[tuple[str, str, str]] = []
    found = False
    for split in splits:
        files = [directory / f"{n}.{split}" for n in ("s1", "s2", "labels")]
        if not all(f.is_file() for f in files):
            continue
        found = True
        cols = [_open_lines(f, "NLI")[1] for f in files]
        if not len(cols[0]) == len(cols[1]) == len(cols[2]):
            raise NestembError(
                f"{directory}: s1.{split}, s2.{split}, labels.{split} have different line counts "
                f"({len(cols[0])}, {len(cols[1])}, {len(cols[2])})"
            )
        by_premise: dict[str, dict[str, list[str]]] = {}
        for lineno, (p, h, lab) in enumerate(zip(*cols), 1):
            lab = lab.strip()
            if lab not in ("entailment", "neutral", "contradiction", "-", ""):
                raise NestembError(f"{files[2]}:{lineno}: unknown label {lab!r}")
            by_premise.setdefault(p.strip(), {}).setdefault(lab, []).append(h.strip())
        for p, groups in by_premise.items():
            for e, c in zip(groups.get("entailment", []), groups.get("contradiction", [])):
                out.append((p, e, c))
    if not found:
        raise NestembError(f"no SNLI files (s1.*, s2.*, labels.*) for splits {splits} in {directory}")
    if not out:
        raise NestembError(f"no (premise, entailment, contradiction) triplets in {directory}")
    return out


def read_mrpc(path: str | os.PathLike) -> list[tuple[str, str, int]]:
    """MRPC TSV (header ``Quality, #1 ID, #2 ID, #1 String, #2 String``; BOM and CRLF allowed):
    (sentence 1, sentence 2, label) with label 1 = paraphrase. Rows whose ids are ``-1`` are
    dropped.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "mrpc.txt"
        >>> _ = p.write_bytes(b"\\xef\\xbb\\xbfQuality\\t#1 ID\\t#2 ID\\t#1 String\\t#2 String\\r\\n"
        ...                   b"1\\t1\\t2\\tA b.\\tA  b .\\r\\n0\\t-1\\t-1\\tx\\ty\\r\\n")
        >>> read_mrpc(p)
        [('A b.', 'A  b .', 1)]
    """
    path, lines = _open_lines(path, "MRPC")
    rows = []
    for lineno, line in enumerate(lines, 1):
        if lineno == 1 and line.startswith("Quality"):
            continue
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 5:
            raise NestembError(f"{path}:{lineno}: expected 5 tab-separated fields, got {len(parts)}")
        if parts[1].strip() == "-1" or parts[2].strip() == "-1":
            continue
        if parts[0].strip() not in ("0", "1"):
            raise NestembError(f"{path}:{lineno}: label {parts[0]!r} is not 0 or 1")
        rows.append((parts[3], parts[4], int(parts[0])))
    if not rows:
        raise NestembError(f"MRPC file has no rows: {path}")
    return rows


def read_pairs(path: str | os.PathLike) -> list[tuple[str, ...]]:
    """Generic pair file: one ``anchor<TAB>positive[<TAB>negative]`` per line (all lines with the
    same number of fields).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "pairs.tsv"
        >>> _ = p.write_text("what is a cat\\tA cat is an animal.\\n")
        >>> read_pairs(p)
        [('what is a cat', 'A cat is an animal.')]
    """
    path, lines = _open_lines(path, "pairs")
    rows: list[tuple[str, ...]] = []
    width = None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = tuple(p.strip() for p in line.split("\t"))
        if len(parts) not in (2, 3) or not all(parts):
            raise NestembError(
                f"{path}:{lineno}: expected 2 or 3 non-empty tab-separated fields "
                f"(anchor, positive[, negative])"
            )
        if width is not None and len(parts) != width:
            raise NestembError(f"{path}:{lineno}: {len(parts)} fields, earlier lines have {width}")
        width = len(parts)
        rows.append(parts)
    if not rows:
        raise NestembError(f"pairs file has no rows: {path}")
    return rows
