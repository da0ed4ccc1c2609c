"""A real English text corpus of over 500,000 passages, built from Debian packages.

``scripts/install-text-corpus.sh`` installs the packages (as ``scripts/find-data.sh`` does
Fashion-MNIST); :func:`build_text_corpus` reads them and writes a BEIR folder that
:func:`nestemb.data.beir.load_beir` (the one corpus reader) reads: ``corpus.jsonl``,
``queries.jsonl``, ``qrels/test.tsv``, plus ``manifest.json`` (counts, package versions,
checksums of the inputs, the files and the texts).

Sources (:data:`SOURCES`), in corpus order:

==========  ================  =====================================================
name        Debian package    passages
==========  ================  =====================================================
wordnet     wordnet-base      one per synset (its definition), one per example
gcide       dict-gcide        one per sense, phrase and note; one per quotation
foldoc      dict-foldoc       one per paragraph (computing)
jargon      dict-jargon       one per paragraph (hacker slang)
devil       dict-devil        one per paragraph (Bierce's Devil's Dictionary)
kjv         bible-kjv         one per verse (King James Bible)
fortunes    fortunes          one per cookie
pydoc       python3-doc       one per paragraph (the Python documentation)
pgdoc       postgresql-doc    one per paragraph (the PostgreSQL manual)
==========  ================  =====================================================

What is kept, and why:

- **Queries are held-out WordNet example sentences** (``I can breathe better when the air is
  clean``): :data:`N_QUERIES` synsets drawn by a seeded sampler among those with an example of
  at least :data:`MIN_QUERY_WORDS` words that no other synset shares, one example each. Each
  query's one relevant passage (score 1) is its synset's definition (title: the lemmas). The
  task is real (which sense does this sentence use?), fixed by the database, needs no model.
  The query sentence is removed from the corpus, and so is every passage that quotes it word
  for word (no leak; :data:`LEAK_WORDS` says when a shared phrase counts). Other examples of the same synset stay in the corpus, unjudged.
- **Examples and quotations are passages of their own** (title empty), never part of a
  definition's text, so that a held-out one cannot hide inside its relevant passage.
- **GCIDE's copies of WordNet 1.5** (senses tagged WordNet and not Webster) are left out: they
  repeat WordNet 3.0's glosses and examples, unjudged twins of the relevant passages.
- **Filters**: definitions need :data:`~nestemb.data.dictionaries.MIN_WORDS` words and must not
  be a bare cross reference; sentences and paragraphs must read as prose
  (:func:`~nestemb.data.dictionaries.prose_ok`: five words or more, WordNet examples four, as
  the queries); exact duplicates (same title and text) are
  kept once, the first in corpus order. The manifest counts every drop by reason.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from nestemb.data.beir import MAX_ID_CHARS, write_beir
from nestemb.data.dictionaries import (DICTD_DIR, GCIDE_DICT, MIN_PROSE_WORDS, WORDNET_DIR,
                                       WORDNET_FILES, Passage, keep_text, prose_ok,
                                       read_dictd_paragraphs, read_gcide, read_wordnet)
from nestemb.data.prose import (FORTUNES_DIR, PYTHON_DOCS, postgres_docs, read_fortunes,
                                read_html_docs, read_kjv)
from nestemb.errors import NestembError
from nestemb.io import atomic_dir, check_replaceable, sha256_file, sha256_texts, write_json

KIND = "text-corpus"
"""The artefact kind in the folder's output marker."""

SPLIT = "test"
"""The qrels split written (``qrels/test.tsv``)."""

N_QUERIES = 2000
"""Queries drawn by default."""

MIN_QUERY_WORDS = 4
"""Shortest example sentence drawn as a query, in words (``an abaxial surface`` is a phrase)."""

DEFINITION_KINDS = ("definition", "sense", "phrase", "note")
"""Passage kinds held to :func:`~nestemb.data.dictionaries.keep_text`; all others (examples,
quotations, paragraphs, verses, cookies) to :func:`~nestemb.data.dictionaries.prose_ok`."""


@dataclasses.dataclass(frozen=True)
class TextSource:
    """One source of the corpus: its ``name`` (the id prefix family), the Debian ``packages``
    that install it, ``read``, which returns its passages, and ``inputs``, which returns the
    installed files or folders checksummed into the manifest.

    Example:
        >>> SOURCES["wordnet"].packages, len(SOURCES["wordnet"].inputs())
        (('wordnet-base',), 4)
    """

    name: str
    packages: tuple[str, ...]
    read: Callable[[], list[Passage]]
    inputs: Callable[[], tuple[Path, ...]] = tuple


def _dictd(db: str) -> TextSource:
    path = DICTD_DIR / f"{db}.dict.dz"
    return TextSource(db, (f"dict-{db}",), lambda: read_dictd_paragraphs(path),
                      lambda: (path, DICTD_DIR / f"{db}.index"))


SOURCES: dict[str, TextSource] = {
    "wordnet": TextSource("wordnet", ("wordnet-base",), read_wordnet,
                          lambda: tuple(WORDNET_DIR / f for f in WORDNET_FILES.values())),
    "gcide": TextSource("gcide", ("dict-gcide",), read_gcide,
                        lambda: (GCIDE_DICT, DICTD_DIR / "gcide.index")),
    "foldoc": _dictd("foldoc"),
    "jargon": _dictd("jargon"),
    "devil": _dictd("devil"),
    "kjv": TextSource("kjv", ("bible-kjv", "bible-kjv-text"), read_kjv,
                      lambda: (Path("/usr/lib/bible.data"),)),
    "fortunes": TextSource("fortunes", ("fortunes",), read_fortunes, lambda: (FORTUNES_DIR,)),
    "pydoc": TextSource("pydoc", ("python3-doc",), read_html_docs,
                        lambda: (PYTHON_DOCS.resolve(),)),
    "pgdoc": TextSource("pgdoc", ("postgresql-doc",),
                        lambda: read_html_docs(postgres_docs(), "pgdoc", "postgresql-doc"),
                        lambda: (postgres_docs(),)),
}
"""Every source :func:`build_text_corpus` knows, in corpus order."""

PACKAGES = tuple(dict.fromkeys(p for s in SOURCES.values() for p in s.packages))
"""Every Debian package of :data:`SOURCES` (what ``scripts/install-text-corpus.sh`` installs)."""


@dataclasses.dataclass
class TextCorpus:
    """A corpus ready to write: its passages, the queries as (id, text), the qrels
    (query id -> {passage id: 1}), and the passages dropped, by reason.

    Example:
        >>> TextCorpus([], [], {}, {}).counts()
        {}
    """

    corpus: list[Passage]
    queries: list[tuple[str, str]]
    qrels: dict[str, dict[str, int]]
    dropped: dict[str, int]

    def counts(self) -> dict[str, int]:
        """Passages by ``source/kind``, in order of first appearance.

        Example:
            >>> c = TextCorpus([Passage("a", "", "x y", "kjv", "verse")], [], {}, {})
            >>> c.counts()
            {'kjv/verse': 1}
        """
        return dict(collections.Counter(f"{p.source}/{p.kind}" for p in self.corpus))


def expand_examples(passage: Passage) -> Iterator[Passage]:
    """A passage (its examples left off) followed by each example as a passage of its own:
    id ``<id>-x<j>``, no title, kind ``example`` (WordNet) or ``quotation`` (GCIDE).

    Example:
        >>> p = Passage("wn-v-1", "breathe", "draw air", "wordnet", "definition", ("I breathe",))
        >>> [(q.id, q.title, q.text, q.kind) for q in expand_examples(p)]
        [('wn-v-1', 'breathe', 'draw air', 'definition'), ('wn-v-1-x1', '', 'I breathe', 'example')]
    """
    yield dataclasses.replace(passage, examples=())
    kind = "example" if passage.source == "wordnet" else "quotation"
    for j, text in enumerate(passage.examples, 1):
        yield Passage(f"{passage.id}-x{j}", "", text, passage.source, kind)


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\w+", text.casefold()))


def assemble_corpus(
    passages: Iterable[Passage],
    n_queries: int = N_QUERIES,
    seed: int = 0,
    min_query_words: int = MIN_QUERY_WORDS,
) -> TextCorpus:
    """Filter the passages, draw the queries and hold them out, as the module states.

    ``passages`` are the readers' output in corpus order (examples still attached to their
    definitions). Raises :class:`NestembError` for an id that is repeated or longer than
    :data:`~nestemb.data.beir.MAX_ID_CHARS`, and when fewer than ``n_queries`` synsets have
    an example to draw.

    Example:
        >>> ps = [Passage(f"wn-n-{i}", f"word{i}", f"the meaning number {i}", "wordnet",
        ...               "definition", (f"a sentence that uses word{i} well",)) for i in range(5)]
        >>> c = assemble_corpus(ps, n_queries=2, seed=0)
        >>> len(c.corpus), c.queries[0], c.qrels[c.queries[0][0]]
        (8, ('q-wn-n-3-x1', 'a sentence that uses word3 well'), {'wn-n-3': 1})
        >>> c.dropped
        {'query': 2}
    """
    if n_queries < 0:
        raise NestembError(f"{{param}} must be >= 0, got {n_queries}", param="n_queries")
    dropped: collections.Counter[str] = collections.Counter()
    kept: list[Passage] = []
    examples_of: dict[str, tuple[str, ...]] = {}
    seen_ids: set[str] = set()
    seen_bodies: set[str] = set()
    for passage in passages:
        if passage.source == "wordnet" and passage.kind == "definition":
            examples_of[passage.id] = passage.examples
        for p in expand_examples(passage):
            if p.id in seen_ids or len(p.id) > MAX_ID_CHARS:
                raise NestembError(f"passage id {p.id!r} is repeated or longer than "
                                   f"{MAX_ID_CHARS} characters")
            seen_ids.add(p.id)
            if p.source == "gcide-wordnet":
                dropped["gcide_wordnet_copy"] += 1
            elif p.kind in DEFINITION_KINDS and not keep_text(p.text):
                dropped["short_or_cross_reference"] += 1
            elif p.kind not in DEFINITION_KINDS and not prose_ok(
                    p.text, min_query_words if p.kind == "example" else MIN_PROSE_WORDS):
                dropped["not_prose"] += 1
            elif p.body in seen_bodies:
                dropped["duplicate"] += 1
            else:
                seen_bodies.add(p.body)
                kept.append(p)

    # the query pool: synsets whose definition was kept, with an unshared example long enough
    kept_ids = {p.id for p in kept}
    shared = collections.Counter(e for exs in examples_of.values() for e in set(exs))
    pool = []
    for sid, exs in examples_of.items():
        usable = [(j, e) for j, e in enumerate(exs, 1)
                  if len(e.split()) >= min_query_words and shared[e] == 1]
        if sid in kept_ids and usable:
            pool.append((sid, usable))
    if n_queries > len(pool):
        raise NestembError(f"{{param}} = {n_queries} but only {len(pool)} synsets have an "
                           "example to draw", param="n_queries")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(pool), size=n_queries, replace=False))
    queries: list[tuple[str, str]] = []
    qrels: dict[str, dict[str, int]] = {}
    for i in chosen:
        sid, usable = pool[int(i)]
        j, text = usable[int(rng.integers(len(usable)))]
        qid = f"q-{sid}-x{j}"
        queries.append((qid, text))
        qrels[qid] = {sid: 1}

    # hold the queries out: their own passages, and any passage containing one word for word
    query_texts = {text for _, text in queries}
    by_start: dict[tuple[str, ...], list[tuple[str, ...]]] = collections.defaultdict(list)
    for _, text in queries:
        w = _words(text)
        by_start[w[:3]].append(w)
    relevant = {d for docs in qrels.values() for d in docs}
    corpus = []
    for p in kept:
        if p.body in query_texts and p.id not in relevant:
            dropped["query"] += 1
            continue
        if p.id not in relevant and _leaks(_words(p.body), by_start):
            dropped["contains_query"] += 1
            continue
        corpus.append(p)
    return TextCorpus(corpus, queries, qrels, dict(dropped))


LEAK_WORDS = 6
"""A passage that holds a query's words in sequence is a leak (and is dropped) when the query
has this many words or more, or makes up a third of the passage or more; a shorter phrase
inside a longer passage (``the base of the skull``) is not a leak."""


def _leaks(words: tuple[str, ...], by_start: Mapping[tuple[str, ...], list]) -> bool:
    """Whether ``words`` holds one of the word sequences of ``by_start`` (keyed by their first
    three words) contiguously, as a leak by :data:`LEAK_WORDS`'s rule."""
    for i in range(len(words)):
        for seq in by_start.get(words[i:i + 3], ()):
            if words[i:i + len(seq)] == seq and (len(seq) >= LEAK_WORDS
                                                 or 3 * len(seq) >= len(words)):
                return True
    return False


def debian_version(package: str) -> str | None:
    """The installed version of a Debian package, or ``None`` (not installed, no dpkg).

    Example:
        >>> debian_version("no-such-package-nestemb") is None
        True
    """
    try:
        run = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return (run.stdout.strip() or None) if run.returncode == 0 else None


def checksum_path(path: str | os.PathLike) -> str:
    """The sha256 of a file, or of a folder: over its files' relative paths and sha256s, in
    path order (so a changed, added or removed file changes it).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a").write_text("x")
        >>> before = checksum_path(d); _ = (d / "b").write_text("y")
        >>> before != checksum_path(d), len(checksum_path(d / "a"))
        (True, 64)
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\t{sha256_file(f)}\n".encode())
    return h.hexdigest()


def build_text_corpus(
    out: str | os.PathLike,
    sources: Sequence[str] | Mapping[str, TextSource] = tuple(SOURCES),
    n_queries: int = N_QUERIES,
    seed: int = 0,
    min_query_words: int = MIN_QUERY_WORDS,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Read ``sources`` (names of :data:`SOURCES`, or the sources themselves), assemble the
    corpus (:func:`assemble_corpus`) and write it to ``out`` as a BEIR folder with
    ``manifest.json``, all or nothing (:func:`nestemb.io.atomic_dir`). Returns the manifest.

    The manifest holds: the counts (passages by ``source/kind``, queries, drops by reason),
    the query rule and seed, each source's packages with their installed versions and the
    sha256 of its installed files, the sha256 of each written file, and ``texts_sha256``: of
    the corpus texts and the query texts as embedded (``title text``, in file order; the
    hash :func:`nestemb.text.cache.cache_key` keys cached embeddings by).

    Example:
        >>> import tempfile, pathlib
        >>> from nestemb.data.beir import load_beir
        >>> ps = [Passage(f"wn-n-{i}", f"word{i}", f"the meaning number {i}", "wordnet",
        ...               "definition", (f"a sentence that uses word{i} well",)) for i in range(5)]
        >>> src = {"toy": TextSource("toy", (), lambda: ps)}
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "corpus"
        >>> man = build_text_corpus(out, src, n_queries=2)
        >>> man["counts"]["corpus"], man["counts"]["queries"], len(load_beir(out).corpus)
        (8, 2, 8)
    """
    say = log or (lambda _msg: None)
    if isinstance(sources, Mapping):
        chosen = dict(sources)
    else:
        unknown = [s for s in sources if s not in SOURCES]
        if unknown:
            raise NestembError(f"unknown source(s) {unknown} in {{param}}; known: {list(SOURCES)}",
                               param="sources")
        chosen = {s: SOURCES[s] for s in sources}
    check_replaceable(out, KIND, overwrite)
    passages: list[Passage] = []
    provenance = {}
    for name, source in chosen.items():
        say(f"reading {name} ({', '.join(source.packages) or 'no package'})")
        got = source.read()
        passages.extend(got)
        provenance[name] = {
            "packages": {p: debian_version(p) for p in source.packages},
            "inputs": {str(p): checksum_path(p) for p in source.inputs()},
            "read": len(got),
        }
    say(f"assembling {len(passages)} passages")
    corpus = assemble_corpus(passages, n_queries, seed, min_query_words)
    manifest = {
        "kind": KIND,
        "format": "beir",
        "split": SPLIT,
        "counts": {"corpus": len(corpus.corpus), "queries": len(corpus.queries),
                   "by_source": corpus.counts(), "dropped": corpus.dropped},
        "queries": {"n": n_queries, "seed": seed, "min_words": min_query_words,
                    "rule": "one WordNet example sentence per sampled synset, held out; "
                            "relevant: that synset's definition (score 1)"},
        "sources": provenance,
        "texts_sha256": {"corpus": sha256_texts(p.body for p in corpus.corpus),
                         "queries": sha256_texts(t for _, t in corpus.queries)},
    }
    with atomic_dir(out, KIND, overwrite) as tmp:
        say(f"writing {len(corpus.corpus)} passages and {len(corpus.queries)} queries")
        write_beir(tmp, ((p.id, p.title, p.text) for p in corpus.corpus), corpus.queries,
                   corpus.qrels, SPLIT)
        manifest["sha256"] = {name: sha256_file(tmp / name) for name in
                              ("corpus.jsonl", "queries.jsonl", f"qrels/{SPLIT}.tsv")}
        write_json(tmp / "manifest.json", manifest)
    return manifest
