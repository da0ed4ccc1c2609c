r"""Readers for the English dictionaries Debian installs: WordNet and the dictd databases.

- **WordNet 3.0** (``wordnet-base``): the database files ``/usr/share/wordnet/data.{noun,verb,
  adj,adv}``, one synset a line (``offset lex_filenum ss_type w_cnt word lex_id ... | gloss``).
  :func:`parse_wordnet_line` makes one :class:`Passage` per synset: the title is its lemmas
  (``breathe, take a breath, respire``), the text its definition (the gloss up to its first
  quoted example), the quoted examples kept apart in ``examples``.
- **dictd databases**: a ``.index`` (``headword<TAB>offset<TAB>length``, numbers in dictd's
  base64) over a ``.dict.dz`` (dictzip, read as gzip). :func:`read_dictd` yields each entry
  once.
- **GCIDE 0.48** (``dict-gcide``, the Collaborative International Dictionary of English:
  Webster's 1913 with later supplements): :func:`parse_gcide_entry` splits an entry into one
  passage per numbered or lettered sense, per defined phrase (``{Zygomatic arch}, the arch of
  bone ...``) and per usage note, keeping the quotations that follow a sense in its
  ``examples``. Synonym lists and etymologies are dropped; markup (``{cross refs}``, source
  tags such as ``[1913 Webster]``, the bracket spellings of accented letters such as
  ``['e]``) is removed or turned into Unicode. Senses GCIDE took from WordNet 1.5 are marked
  (``source == "gcide-wordnet"``) so that a corpus can leave them out.
- **Prose dictd databases** (``dict-foldoc``, ``dict-jargon``, ``dict-devil``):
  :func:`parse_dictd_paragraphs`, one passage per paragraph of an entry.

The corpus built from these (and from :mod:`nestemb.data.prose`) is
:func:`nestemb.data.text_corpus.build_text_corpus`; it states which passages it keeps and why.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import unicodedata
from pathlib import Path
from typing import Iterator

from nestemb.data.beir import doc_text
from nestemb.errors import NestembError

WORDNET_DIR = Path("/usr/share/wordnet")
"""Where the Debian package ``wordnet-base`` installs the WordNet 3.0 database."""

DICTD_DIR = Path("/usr/share/dictd")
"""Where the Debian ``dict-*`` packages install their dictd databases."""

GCIDE_DICT = DICTD_DIR / "gcide.dict.dz"
"""Where the Debian package ``dict-gcide`` installs GCIDE (``gcide.index`` beside it)."""

WORDNET_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
"""The WordNet data file of each part of speech (satellite adjectives live in ``data.adj``)."""

MIN_WORDS = 2
"""Shortest passage text kept, in words (a one-word definition is a synonym, not prose)."""


@dataclasses.dataclass(frozen=True)
class Passage:
    """One passage: a stable ``id``, a ``title`` (the headword, lemmas or page; may be empty),
    the ``text``, its ``source`` (``wordnet``, ``gcide``, ``gcide-wordnet``, ``foldoc``,
    ``kjv``, ...), its ``kind`` (``definition``, ``sense``, ``phrase``, ``note``, ``example``,
    ``quotation``, ``paragraph``, ``verse``, ``cookie``) and the example sentences or
    quotations that illustrate it (not part of ``text``).

    Example:
        >>> p = Passage("wn-v-00001740", "breathe, respire", "draw air into the lungs", "wordnet",
        ...             "definition", ("I can breathe better",))
        >>> p.body
        'breathe, respire draw air into the lungs'
    """

    id: str
    title: str
    text: str
    source: str
    kind: str
    examples: tuple[str, ...] = ()

    @property
    def body(self) -> str:
        """Title and text under the corpus reader's one rule, :func:`~nestemb.data.beir.doc_text`."""
        return doc_text(self.title, self.text)


# --------------------------------------------------------------------------- text clean-up

_COMBINING = {"'": "\u0301", "`": "\u0300", '"': "\u0308", "=": "\u0304", "~": "\u0303",
              "^": "\u0302", ",": "\u0327", ".": "\u0307"}
_ENTITIES = {"ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "thorn": "þ", "imac": "ī",
             "aum": "ä", "add": "", "asl": "", "root": "√", "deg": "°", "frac12": "½",
             "frac14": "¼", "frac34": "¾", "sect": "§", "pound": "£", "cent": "¢", "ntilde": "ñ",
             "ccedil": "ç", "uum": "ü", "oum": "ö", "eum": "ë", "iacute": "í", "eacute": "é",
             "times": "×", "divide": "÷", "middot": "·", "dagger": "†", "para": "¶"}
_ENTITY_RE = re.compile(r"\[([A-Za-z]{2,7}|['`\"=~^,.][A-Za-z]|[A-Za-z][\^,]|-[A-Za-z])\]")


def _entity(m: re.Match) -> str:
    code = m.group(1)
    if code in _ENTITIES:
        return _ENTITIES[code]
    if code[0] in _COMBINING and code[1].isalpha():            # ['e] é, [=a] ā, [.a] ȧ
        return unicodedata.normalize("NFC", code[1] + _COMBINING[code[0]])
    if code[1] == "^":                                           # [a^] ă (breve)
        return unicodedata.normalize("NFC", code[0] + "\u0306")
    if code[1] == ",":                                           # [c,] ç
        return unicodedata.normalize("NFC", code[0] + "\u0327")
    if code[0] == "-":                                           # [-e] ē
        return unicodedata.normalize("NFC", code[1] + "\u0304")
    return m.group(0)                                            # a word in brackets: [Obs.]


def clean_gcide_text(text: str) -> str:
    """GCIDE's markup removed from a piece of text: ``{cross refs}`` lose their braces, the
    bracket spellings of accented letters become Unicode, whitespace is collapsed. Labels
    such as ``[Obs.]`` stay.

    Example:
        >>> clean_gcide_text("See {Caf['e]}, an  [ae]ther\\n   word. [Obs.]")
        'See Café, an æther word. [Obs.]'
    """
    text = _ENTITY_RE.sub(_entity, text.replace("{", "").replace("}", ""))
    return " ".join(text.split())


def _words(text: str) -> int:
    return len(text.split())


_CROSS_REF = re.compile(r"^(?:See|Same as|Cf\.)\s+\S+(?:\s+\S+){0,3}$")


def keep_text(text: str) -> bool:
    """Whether a passage text is worth keeping: at least :data:`MIN_WORDS` words, and not a bare
    cross reference (``See Zythum.``, ``Same as Abaddon.``).

    Example:
        >>> keep_text("A brewery."), keep_text("Unrestrainedly."), keep_text("See Zythum.")
        (True, False, False)
    """
    return _words(text) >= MIN_WORDS and not _CROSS_REF.match(text)


# --------------------------------------------------------------------------- WordNet


def parse_wordnet_line(line: str, pos: str | None = None) -> Passage | None:
    """One line of a WordNet ``data.<pos>`` file as a passage (``None`` for the licence header
    and blank lines). Lemmas lose their underscores and adjective markers (``(a)``, ``(p)``);
    the gloss splits into the definition and its quoted examples.

    ``pos`` names the file's part of speech for the id (``n``, ``v``, ``a``, ``r``); by default
    the line's own synset type (satellites ``s`` count as ``a``).

    Example:
        >>> line = ('00001740 29 v 02 breathe 0 take_a_breath 0 001 * 00005041 v 0000 01 + 02 00 '
        ...         '| draw air into, and expel out of, the lungs; "I can breathe better when the '
        ...         'air is clean"; "The patient is respiring"  ')
        >>> p = parse_wordnet_line(line)
        >>> p.id, p.title, p.text
        ('wn-v-00001740', 'breathe, take a breath', 'draw air into, and expel out of, the lungs')
        >>> p.examples
        ('I can breathe better when the air is clean', 'The patient is respiring')
        >>> parse_wordnet_line("  1 This software and database is being provided") is None
        True
    """
    if not line.strip() or line.startswith(" "):
        return None
    head, sep, gloss = line.partition(" | ")
    fields = head.split()
    if len(fields) < 4:
        raise NestembError(f"not a WordNet data line: {line[:60]!r}")
    try:
        offset, ss_type, count = fields[0], fields[2], int(fields[3], 16)
    except ValueError:
        raise NestembError(f"not a WordNet data line: {line[:60]!r}") from None
    lemmas: list[str] = []
    for w in fields[4:4 + 2 * count:2]:
        w = re.sub(r"\([a-z]+\)$", "", w).replace("_", " ")
        if w not in lemmas:
            lemmas.append(w)
    gloss = gloss.strip() if sep else ""
    quote = gloss.find('"')
    definition = (gloss if quote < 0 else gloss[:quote]).strip().rstrip(";").strip()
    examples = tuple(e.strip() for e in re.findall(r'"([^"]+)"', gloss[max(quote, 0):])
                     if quote >= 0 and e.strip())
    pos = pos or ("a" if ss_type == "s" else ss_type)
    return Passage(f"wn-{pos}-{offset}", ", ".join(lemmas), definition, "wordnet", "definition",
                   examples)


def read_wordnet(folder: str | os.PathLike = WORDNET_DIR) -> list[Passage]:
    """Every synset of the WordNet database in ``folder`` (the four ``data.*`` files, in the
    order noun, verb, adjective, adverb), one passage each.

    Example:
        >>> import tempfile, pathlib
        >>> read_wordnet(pathlib.Path(tempfile.mkdtemp()))
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: WordNet data file not found: .../data.noun (install it: sudo apt-get install wordnet-base)
    """
    folder = Path(folder)
    out: list[Passage] = []
    for pos, name in WORDNET_FILES.items():
        path = folder / name
        if not path.is_file():
            raise NestembError(f"WordNet data file not found: {path} "
                               "(install it: sudo apt-get install wordnet-base)")
        with open(path, encoding="utf-8") as f:
            for line in f:
                p = parse_wordnet_line(line.rstrip("\n"), pos)
                if p is not None:
                    out.append(p)
    return out


# --------------------------------------------------------------------------- dictd / GCIDE

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}


def dictd_number(code: str) -> int:
    """A number of a dictd index (base 64, most significant digit first).

    Example:
        >>> dictd_number("A"), dictd_number("z"), dictd_number("BA"), dictd_number("I79")
        (0, 51, 64, 36605)
    """
    value = 0
    for c in code:
        if c not in _B64_VALUE:
            raise NestembError(f"not a dictd index number: {code!r}")
        value = value * 64 + _B64_VALUE[c]
    return value


def read_dictd_index(path: str | os.PathLike) -> list[tuple[str, int, int]]:
    """The rows of a dictd ``.index`` file as (headword, offset, length).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.index"
        >>> _ = p.write_text("Abandon\\tI79\\t2i\\nzygoma\\tBA\\tK\\n")
        >>> read_dictd_index(p)
        [('Abandon', 36605, 3490), ('zygoma', 64, 10)]
    """
    path = Path(path)
    if not path.is_file():
        raise NestembError(f"dictd index not found: {path}")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                raise NestembError(f"{path}:{lineno}: expected headword, offset and length")
            try:
                rows.append((parts[0], dictd_number(parts[1]), dictd_number(parts[2])))
            except NestembError as e:
                raise NestembError(f"{path}:{lineno}: {e}") from None
    return rows


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # GCIDE 0.48 holds three stray Windows-1252 bytes
        return raw.decode("cp1252", errors="replace")


def read_dictd(dict_path: str | os.PathLike,
               index_path: str | os.PathLike | None = None) -> Iterator[tuple[int, str, str]]:
    """Each entry of a dictd database once, in file order, as (offset, headword, text).

    Several index rows may point at one entry (inflections, phrases); the entry comes once,
    under its first headword. The database's own ``00-database-*`` entries are skipped.
    ``dict_path`` may be plain or dictzip (gzip); ``index_path`` defaults to the ``.index``
    beside it.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "t.dict").write_bytes(b"Cat \\\\Cat\\\\, n.\\n   A small animal.\\n\\nDog ...\\n")
        >>> _ = (d / "t.index").write_text("Cat\\tA\\tc\\ncat\\tA\\tc\\nDog\\tf\\tI\\n")
        >>> [(o, w) for o, w, _ in read_dictd(d / "t.dict")]
        [(0, 'Cat'), (31, 'Dog')]
    """
    dict_path = Path(dict_path)
    if index_path is None:
        name = dict_path.name
        for suffix in (".dict.dz", ".dict"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        index_path = dict_path.with_name(name + ".index")
    if not dict_path.is_file():
        raise NestembError(f"dictd database not found: {dict_path}")
    rows = read_dictd_index(index_path)
    with open(dict_path, "rb") as f:
        magic = f.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(dict_path, "rb") as f:
        data = f.read()
    seen: set[tuple[int, int]] = set()
    entries = []
    for word, offset, length in rows:
        if word.startswith("00-database") or word.startswith("00database"):
            continue
        if (offset, length) in seen:
            continue
        seen.add((offset, length))
        if offset + length > len(data):
            raise NestembError(f"{index_path}: entry {word!r} lies past the end of {dict_path}")
        entries.append((offset, length, word))
    entries.sort()
    for offset, length, word in entries:
        yield offset, word, _decode(data[offset:offset + length])


_SOURCE_TAG = re.compile(r"\[[^\[\]]*(?:Webster|WordNet|PJC|Century|RDH|Suppl|\bAS\b)[^\[\]]*\]")
_SENSE = re.compile(r"^(\d{1,2}\.|\([a-z]\))\s*")
_LABEL_ONLY = re.compile(r"^\([^()]*\)\.?$")
_PHRASE = re.compile(r"^\{([^{}]+)\}\s*(.*)$", re.S)
_DERIVED = re.compile(r"\s+--\s+(?:[^\s,]+,\s+(?:adv|n|a|v\. ?[ti]|n\. pl)\.|\S*[*`]\S*.*)$")
_ATTRIBUTION = re.compile(r"\s*--\s?(?=[A-Z0-9])[^\"]{0,60}$")


def _header_end(lines: list[str]) -> int:
    """How many lines the headword line of an entry spans: it goes on over lines that start
    in column 0 (more headword forms), while a bracket it opened (an etymology, the inflected
    forms) is open, and while it ends in a comma."""
    depth, i = 0, 0
    while i < len(lines):
        line = lines[i]
        if i > 0 and (not line.strip() or _SENSE.match(line.strip())
                      or _SOURCE_TAG.match(line.strip())):
            break
        depth += line.count("[") - line.count("]")
        i += 1
        more = i < len(lines) and lines[i][:1] not in ("", " ")
        if depth <= 0 and not more and not line.rstrip().endswith(","):
            break
    return i


def _headword(text: str) -> str:
    """A headword without GCIDE's syllable and stress marks (``A*ban"don`` -> ``Abandon``)."""
    if "*" in text or "`" in text:
        text = text.replace("*", "").replace('"', "").replace("`", "")
    return clean_gcide_text(text)


def _strip_attribution(text: str) -> str:
    """A quotation's or definition's trailing author (``... --Shak.``) removed."""
    text = _ATTRIBUTION.sub("", text).strip()
    return text[:-2].rstrip() if text.endswith(" --") else text


def parse_gcide_entry(text: str, offset: int = 0, headword: str | None = None) -> list[Passage]:
    r"""The passages of one GCIDE entry: one per sense (numbered, lettered, or the entry's
    single definition), per defined phrase and per usage note.

    Quotations (paragraphs indented deeper than the senses) go to the ``examples`` of the
    item before them; synonym lists are dropped; a sense that only names a field
    (``3. (Com. Law)``) prefixes its lettered sub-senses, and a phrase with no definition of
    its own (``{To set milk}.``) titles them. Trailing authors (``--Shak.``) and source tags
    are removed. A passage's ``source`` is ``gcide``, or ``gcide-wordnet`` when its source
    tag names WordNet and not Webster (GCIDE's copies of WordNet 1.5). Ids are
    ``gcide-<offset>-<n>``, ``n`` counting the entry's passages from 1.

    Example:
        >>> entry = '''Abandon \\A*ban"don\\, v. t. [OF.
        ...    abandoner.]
        ...    1. To cast or drive out; to banish. [Obs.]
        ...       [1913 Webster]
        ...
        ...             That he might . . . abandon them. --Udall.
        ...       [1913 Webster]
        ...
        ...    2. (Law)
        ...       (a) To relinquish all claim to; to {desert}.
        ...           [1913 Webster]
        ...
        ...    Syn: To give up; yield; forego.
        ...
        ...    {To abandon ship}, to leave a sinking vessel.
        ...       [WordNet 1.5]
        ... '''
        >>> for p in parse_gcide_entry(entry, 7):
        ...     print(p.id, p.kind, p.source, repr(p.title), repr(p.text), p.examples)
        gcide-7-1 sense gcide 'Abandon' 'To cast or drive out; to banish. [Obs.]' ('That he might . . . abandon them.',)
        gcide-7-2 sense gcide 'Abandon' '(Law) To relinquish all claim to; to desert.' ()
        gcide-7-3 phrase gcide-wordnet 'To abandon ship' 'to leave a sinking vessel.' ()
    """
    lines = text.rstrip("\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        return []
    n_head = _header_end(lines)
    head = lines[0]
    title = head.split("\\")[0] if "\\" in head else (headword or head.split(",")[0])
    title = _headword(title.replace('"', ""))

    items: list[dict] = []       # kind, title, label, lines, source, examples
    current: dict | None = None  # the item a continuation line belongs to
    quote: list[str] | None = None
    label, parent = "", title    # field label and title for lettered sub-senses
    paragraph_start, sense_indent = True, None

    def new_item(kind: str, body: str, item_title: str, item_label: str = "") -> dict:
        item = {"kind": kind, "title": item_title, "label": item_label,
                "lines": [body] if body else [], "source": "", "examples": []}
        items.append(item)
        return item

    def close_quote() -> None:
        nonlocal quote
        if quote and items:
            items[-1]["examples"].append(" ".join(quote))
        quote = None

    for raw in lines[n_head:]:
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip(" "))
        if not stripped:
            close_quote()
            current, paragraph_start = None, True
            continue
        tag = _SOURCE_TAG.match(stripped)
        if tag:
            target = current if current is not None else (items[-1] if items else None)
            if quote is not None:
                close_quote()
            elif target is not None and not target["source"]:
                target["source"] = tag.group(0)
            current, paragraph_start = None, True
            continue
        if quote is not None:
            quote.append(stripped)
            continue
        if paragraph_start and sense_indent is not None and indent >= sense_indent + 6:
            quote, paragraph_start = [stripped], False
            continue
        at_start, paragraph_start = paragraph_start, False
        m = _SENSE.match(stripped)
        numbered = bool(m) and stripped[0].isdigit()
        if numbered and indent > 4:
            m, numbered = None, False        # a number wrapped onto a continuation line
        if stripped.startswith(("Syn:", "Syn.")):
            current = new_item("syn", "", title)
        elif stripped.startswith(("Note:", "Usage:")):
            label, parent = "", title
            current = new_item("note", stripped.split(":", 1)[1].strip(), title)
        elif stripped.startswith("{") and indent <= 4 and at_start:
            pm = _PHRASE.match(stripped)
            phrase = _headword(pm.group(1)) if pm else title
            rest = pm.group(2) if pm else stripped
            label, parent = "", phrase
            current = new_item("phrase", rest, phrase)
        elif m or current is None:
            body = stripped[m.end():] if m else stripped
            if sense_indent is None:
                sense_indent = indent
            if numbered or not m:
                label = body if numbered and _LABEL_ONLY.match(clean_gcide_text(body)) else ""
                parent = title
                current = new_item("sense", body, title)
            else:                             # (a), (b): under the last number or phrase
                current = new_item("phrase" if parent != title else "sense", body, parent, label)
        else:
            current["lines"].append(stripped)
    close_quote()

    out: list[Passage] = []
    for item in items:
        body = _SOURCE_TAG.sub("", clean_gcide_text(" ".join(item["lines"])))
        body = _strip_attribution(" ".join(body.split())).lstrip(".,;: ")
        body = _DERIVED.sub("", body)
        if item["kind"] == "syn" or not body or _LABEL_ONLY.match(body) or "\\" in body:
            continue      # synonyms, a field label alone, an empty item, a misread headword
        if item["label"]:
            body = clean_gcide_text(item["label"]) + " " + body
        source = item["source"]
        origin = "gcide-wordnet" if "WordNet" in source and "Webster" not in source else "gcide"
        examples = tuple(q for q in (_strip_attribution(clean_gcide_text(e))
                                     for e in item["examples"]) if q)
        out.append(Passage(f"gcide-{offset}-{len(out) + 1}", item["title"], body, origin,
                           item["kind"], examples))
    return out


MIN_PROSE_WORDS = 5
"""Shortest paragraph kept from the prose sources (FOLDOC, Jargon, Devil's Dictionary, the
Bible, fortunes, documentation), in words."""

_DATE_ONLY = re.compile(r"^\(\d{4}-\d{2}-\d{2}\)$")
_LEADING_TAG = re.compile(r"^(?:<[^<>]{1,60}>|\[[^\[\]]{1,200}\])\s*")
_DEVIL_HEAD = re.compile(r"^([A-Z][A-Z0-9' .&-]*?),\s+([a-z][a-z.& ]*\.)\s\s+(\S.*)$", re.S)


def prose_ok(text: str, min_words: int = MIN_PROSE_WORDS) -> bool:
    """Whether a paragraph reads as prose: at least ``min_words`` words, no more
    than a third of its visible characters outside letters (tables, code, ASCII art), and
    more words than links.

    Example:
        >>> prose_ok("A kind of data abstraction where the type is hidden."), prose_ok("(1994-11-08)")
        (True, False)
        >>> prose_ok("*# | + 0 - ---|------ + | + 0 - 0 | 0 0 0")
        False
    """
    words = text.split()
    if len(words) < min_words or _DATE_ONLY.match(text):
        return False
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    links = sum("://" in w for w in words)
    return letters >= 2 * len(visible) / 3 and links * 4 < len(words)


def parse_dictd_paragraphs(text: str, db: str, offset: int = 0) -> list[Passage]:
    r"""A prose dictd entry (FOLDOC, the Jargon File, the Devil's Dictionary) as one passage
    per paragraph: the title is the entry's first line, the paragraphs are the blank-line
    separated blocks after its first block. A leading tag (``<programming>``,
    ``[IRC; common]``) and sense number are removed, braces dropped, and paragraphs that fail
    :func:`prose_ok` (dates, tables, link lists) skipped. The Devil's Dictionary's
    ``WORD, n.  text`` heads give the title and the first paragraph. Ids are
    ``<db>-<offset>-<n>``; ``source`` is ``db`` and ``kind`` ``paragraph``.

    Example:
        >>> entry = '''abstract data type
        ... ADT
        ...
        ...    <programming> (ADT) A kind of {data abstraction} where a
        ...    type's internal form is hidden behind access functions.
        ...
        ...    (2003-07-03)
        ... '''
        >>> [(p.id, p.title, p.text) for p in parse_dictd_paragraphs(entry, "foldoc", 5)]
        [('foldoc-5-1', 'abstract data type', "(ADT) A kind of data abstraction where a type's internal form is hidden behind access functions.")]
        >>> [(p.title, p.text) for p in parse_dictd_paragraphs(
        ...     "AGE, n.  That period of life in which we compound for the vices\nthat we still cherish.\n", "devil")]
        [('Age', 'That period of life in which we compound for the vices that we still cherish.')]
    """
    blocks = [b for b in re.split(r"\n\s*\n", text.strip("\n")) if b.strip()]
    if not blocks:
        return []
    title = blocks[0].split("\n")[0].strip()
    rest = blocks[1:]
    head = _DEVIL_HEAD.match(blocks[0])
    if head:
        title = head.group(1).strip()
        rest = [head.group(3)] + rest
    if title.isupper() and len(title) > 1:
        title = title.capitalize()
    out: list[Passage] = []
    for block in rest:
        para = " ".join(block.replace("{", "").replace("}", "").split())
        para = _LEADING_TAG.sub("", para)
        para = _SENSE.sub("", para)
        para = _LEADING_TAG.sub("", para).lstrip(".,;: ").strip()
        if prose_ok(para):
            out.append(Passage(f"{db}-{offset}-{len(out) + 1}", title, para, db, "paragraph"))
    return out


def read_dictd_paragraphs(path: str | os.PathLike, db: str | None = None) -> list[Passage]:
    """Every paragraph passage of a prose dictd database (:func:`parse_dictd_paragraphs`
    over :func:`read_dictd`); ``db`` (the id prefix and ``source``) defaults to the file's
    stem (``foldoc`` for ``foldoc.dict.dz``).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "devil.dict").write_text("AGE, n.  That period of life in which we compound.\\n")
        >>> _ = (d / "devil.index").write_text("AGE\\tA\\tz\\n")
        >>> read_dictd_paragraphs(d / "devil.dict")[0].id
        'devil-0-1'
    """
    path = Path(path)
    if not path.is_file():
        raise NestembError(f"dictd database not found: {path}")
    db = db or path.name.split(".")[0]
    out: list[Passage] = []
    for offset, _word, text in read_dictd(path):
        out.extend(parse_dictd_paragraphs(text, db, offset))
    return out


def read_gcide(path: str | os.PathLike = GCIDE_DICT) -> list[Passage]:
    """Every passage of the GCIDE dictd database at ``path`` (:func:`parse_gcide_entry` over
    :func:`read_dictd`), in file order, before any filtering.

    Example:
        >>> import tempfile, pathlib
        >>> read_gcide(pathlib.Path(tempfile.mkdtemp()) / "gcide.dict.dz")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: dictd database not found: .../gcide.dict.dz (install it: sudo apt-get install dict-gcide)
    """
    path = Path(path)
    if not path.is_file():
        raise NestembError(f"dictd database not found: {path} "
                           "(install it: sudo apt-get install dict-gcide)")
    out: list[Passage] = []
    for offset, word, text in read_dictd(path):
        out.extend(parse_gcide_entry(text, offset, word))
    return out
