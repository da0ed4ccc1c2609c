"""Readers for the English prose Debian packages install besides dictionaries: the King James
Bible (``bible-kjv``), the fortune cookies (``fortunes``) and HTML documentation (Python's,
``python3-doc``; PostgreSQL's, ``postgresql-doc``). Each returns :class:`~nestemb.data.dictionaries.Passage` objects
for :mod:`nestemb.data.text_corpus`.

- **KJV**: one passage per verse, read through the package's own ``bible`` program (the data
  file is in its own compressed format); ids ``kjv-<book>-<chapter>-<verse>``, no title.
- **Fortunes**: one passage per cookie (the ``%``-separated records of
  ``/usr/share/games/fortunes/*``), ASCII art and cookies that are not prose dropped.
- **HTML documentation** (Python's, PostgreSQL's): one passage per ``<p>`` paragraph,
  titled by its page.
"""

from __future__ import annotations

import html.parser
import os
import re
import shutil
import subprocess
from pathlib import Path

from nestemb.data.dictionaries import Passage, prose_ok
from nestemb.errors import NestembError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
"""Where the Debian package ``fortunes`` installs its cookie files."""

FORTUNES_SKIP = ("ascii-art", "ethnic")
"""Fortune files left out: pictures, not prose (``ascii-art``), and jokes about ethnic groups."""

PYTHON_DOCS = Path("/usr/share/doc/python3/html")
"""Where ``python3-doc`` links the HTML documentation of Debian's Python."""

POSTGRES_DOCS = "/usr/share/doc/postgresql-doc-*/html"
"""Where ``postgresql-doc`` (through ``postgresql-doc-<major>``) installs the PostgreSQL manual
in HTML; :func:`postgres_docs` picks the newest major."""

KJV_RANGE = "Gen1:1-Rev22:21"
"""The verse range :func:`read_kjv` asks the ``bible`` program for: all of it."""

_CHAPTER = re.compile(r"^(\S.*?) (\d+)$")
_VERSE = re.compile(r"^\s+(\d+) (.+)$")


def parse_kjv(output: str) -> list[Passage]:
    """The verses printed by ``bible -l0 <range>`` (a ``Book N`` line before each chapter, then
    one indented ``verse text`` line per verse), one passage each.

    Example:
        >>> out = "\\nGenesis 1\\n\\n  1 In the beginning God created the heaven and the earth.\\n"
        >>> [(p.id, p.text) for p in parse_kjv(out)]
        [('kjv-Genesis-1-1', 'In the beginning God created the heaven and the earth.')]
    """
    out: list[Passage] = []
    book, chapter = "", ""
    for line in output.splitlines():
        if not line.strip():
            continue
        verse = _VERSE.match(line)
        if verse and book:
            pid = f"kjv-{book.replace(' ', '_')}-{chapter}-{verse.group(1)}"
            out.append(Passage(pid, "", " ".join(verse.group(2).split()), "kjv", "verse"))
            continue
        head = _CHAPTER.match(line.strip())
        if head and not line.startswith(" "):
            book, chapter = head.group(1), head.group(2)
    return out


def read_kjv(program: str = "bible") -> list[Passage]:
    """Every verse of the King James Bible, from the ``bible`` program of ``bible-kjv``.

    Example:
        >>> read_kjv("no-such-bible-program")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: no-such-bible-program not found (install it: sudo apt-get install bible-kjv)
    """
    exe = shutil.which(program)
    if exe is None:
        raise NestembError(f"{program} not found (install it: sudo apt-get install bible-kjv)")
    run = subprocess.run([exe, "-l0", KJV_RANGE], capture_output=True, timeout=600,
                         env={**os.environ, "COLUMNS": "0"})
    if run.returncode != 0:
        raise NestembError(f"{program} failed: {run.stderr.decode(errors='replace')[:200]}")
    verses = parse_kjv(run.stdout.decode("utf-8", errors="replace"))
    if not verses:
        raise NestembError(f"{program} printed no verses for {KJV_RANGE}")
    return verses


def parse_fortunes(text: str, name: str) -> list[Passage]:
    """The cookies of one fortune file (records separated by lines holding ``%``) that read as
    prose (:func:`~nestemb.data.dictionaries.prose_ok`), whitespace collapsed; ids
    ``fortune-<name>-<n>`` (``n`` counts every record from 1).

    Example:
        >>> text = "Nothing is as simple as it seems at first.\\n%\\n  /\\\\_/\\\\\\n ( o.o )\\n%\\n"
        >>> [(p.id, p.text) for p in parse_fortunes(text, "wisdom")]
        [('fortune-wisdom-1', 'Nothing is as simple as it seems at first.')]
    """
    out: list[Passage] = []
    for n, record in enumerate(re.split(r"^%\s*$", text, flags=re.M), 1):
        body = " ".join(record.split())
        if prose_ok(body):
            out.append(Passage(f"fortune-{name}-{n}", "", body, "fortunes", "cookie"))
    return out


def read_fortunes(folder: str | os.PathLike = FORTUNES_DIR) -> list[Passage]:
    """Every prose cookie of the fortune files in ``folder`` (files without an extension, in
    name order, :data:`FORTUNES_SKIP` left out).

    Example:
        >>> import tempfile, pathlib
        >>> read_fortunes(pathlib.Path(tempfile.mkdtemp()) / "none")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: fortune files not found in .../none (install them: sudo apt-get install fortunes)
    """
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*") if p.is_file() and not p.is_symlink()
                   and "." not in p.name and p.name not in FORTUNES_SKIP) if folder.is_dir() else []
    if not files:
        raise NestembError(f"fortune files not found in {folder} "
                           "(install them: sudo apt-get install fortunes)")
    out: list[Passage] = []
    for path in files:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        out.extend(parse_fortunes(text, path.name))
    return out


class _Paragraphs(html.parser.HTMLParser):
    """The text of each ``<p>`` of a page (nested inline markup flattened) and its title."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth, self.in_title = 0, False
        self.buf: list[str] = []
        self.title: list[str] = []
        self.paragraphs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "p":
            if self.depth == 0:
                self.buf = []
            self.depth += 1
        elif tag == "title":
            self.in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "p" and self.depth:
            self.depth -= 1
            if self.depth == 0:
                self.paragraphs.append(" ".join("".join(self.buf).split()))
        elif tag == "title":
            self.in_title = False

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.buf.append(data)
        elif self.in_title:
            self.title.append(data)


_DOC_SUFFIX = re.compile(r"\s+[—-]+\s+Python [\d.]+\S* documentation$")


def parse_html_paragraphs(page: str, page_id: str, source: str) -> list[Passage]:
    """The prose ``<p>`` paragraphs of one HTML page, titled by its ``<title>`` (less a
    ``— Python 3.x documentation`` suffix); ids ``<page_id>-<n>``.

    Example:
        >>> page = ("<html><title>os — Miscellaneous OS interfaces — Python 3.11.2 documentation"
        ...         "</title><p>This module provides a <em>portable</em> way of using operating "
        ...         "system dependent functionality.</p><p>Note</p></html>")
        >>> [(p.id, p.title, p.text) for p in parse_html_paragraphs(page, "pydoc-library.os", "pydoc")]
        [('pydoc-library.os-1', 'os — Miscellaneous OS interfaces', 'This module provides a portable way of using operating system dependent functionality.')]
    """
    parser = _Paragraphs()
    parser.feed(page)
    parser.close()
    title = _DOC_SUFFIX.sub("", " ".join("".join(parser.title).split()))
    out: list[Passage] = []
    for para in parser.paragraphs:
        if prose_ok(para):
            out.append(Passage(f"{page_id}-{len(out) + 1}", title, para, source, "paragraph"))
    return out


def postgres_docs(pattern: str = POSTGRES_DOCS) -> Path:
    """The HTML folder of the newest PostgreSQL manual installed (``pattern``'s ``*`` is the
    major version), or the pattern's first match-to-be when none is (the readers name it).

    Example:
        >>> postgres_docs("/nonexistent/postgresql-doc-*/html").as_posix()
        '/nonexistent/postgresql-doc-*/html'
    """
    found = [Path(p) for p in Path("/").glob(pattern.lstrip("/")) if Path(p).is_dir()]

    def major(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name))

    return max(found, key=major) if found else Path(pattern)


def read_html_docs(folder: str | os.PathLike = PYTHON_DOCS, source: str = "pydoc",
                   package: str = "python3-doc") -> list[Passage]:
    """The prose paragraphs of every HTML page under ``folder`` (in path order; the index,
    search and generated ``_*`` folders left out). Page ids are ``<source>-<path>`` with
    ``/`` as ``.`` and no ``.html``.

    Example:
        >>> import tempfile, pathlib
        >>> read_html_docs(pathlib.Path(tempfile.mkdtemp()) / "html")
        Traceback (most recent call last):
        ...
        nestemb.errors.NestembError: HTML documentation not found in .../html (install it: sudo apt-get install python3-doc)
    """
    folder = Path(folder)
    pages = sorted(p for p in folder.rglob("*.html")
                   if not any(part.startswith("_") for part in p.relative_to(folder).parts)
                   and p.name not in ("genindex.html", "search.html", "py-modindex.html")
                   and not p.name.startswith("genindex-")) if folder.is_dir() else []
    if not pages:
        raise NestembError(f"HTML documentation not found in {folder} "
                           f"(install it: sudo apt-get install {package})")
    out: list[Passage] = []
    for page in pages:
        rel = page.relative_to(folder).with_suffix("").as_posix().replace("/", ".")
        text = page.read_text(encoding="utf-8", errors="replace")
        out.extend(parse_html_paragraphs(text, f"{source}-{rel}", source))
    return out
