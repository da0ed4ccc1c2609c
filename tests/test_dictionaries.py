"""The text corpus readers (WordNet, dictd/GCIDE, prose dictd, KJV, fortunes, HTML docs) on small
hand-written samples of each format, the corpus assembly (filters, queries, leaks) and the BEIR
folder it writes; one test on the installed Debian packages when they are there."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from nestemb.data.beir import load_beir
from nestemb.data.dictionaries import (Passage, clean_gcide_text, dictd_number, keep_text,
                                       parse_dictd_paragraphs, parse_gcide_entry,
                                       parse_wordnet_line, read_dictd, read_dictd_index,
                                       read_dictd_paragraphs, read_gcide, read_wordnet)
from nestemb.data.prose import parse_fortunes, parse_html_paragraphs, parse_kjv
from nestemb.data.text_corpus import (PACKAGES, SOURCES, TextSource, assemble_corpus,
                                      build_text_corpus)
from nestemb.errors import NestembError
from nestemb.io import read_marker, sha256_file, sha256_texts

REPO = Path(__file__).resolve().parents[1]

WORDNET_LICENCE = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
WORDNET = {
    "data.noun": WORDNET_LICENCE + (
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 "
        "| that which is perceived or known or inferred to have its own distinct existence "
        "(living or nonliving)  \n"
        "03541091 06 n 02 high_horse 0 high_horse's 0 001 @ 03541000 n 0000 | an attitude of "
        'arrogant superiority; "get off your high horse and admit you are wrong"  \n'),
    "data.verb": WORDNET_LICENCE + (
        "00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 002 * 00005041 v 0000 "
        "* 00004227 v 0000 02 + 02 00 + 08 00 | draw air into, and expel out of, the lungs; "
        '"I can breathe better when the air is clean"; "The patient is respiring"  \n'),
    "data.adj": WORDNET_LICENCE + (
        "00001740 00 a 01 able 0 005 = 05207437 n 0000 | (usually followed by `to') having the "
        'necessary means or skill or know-how or authority to do something; "able to swim"; '
        '"she was able to program her computer"  \n'
        "00002098 00 s 02 sure(p) 0 trusted 0 001 & 00001740 a 0000 | worthy of trust; "
        '"a sure (or trusted) friend"  \n'),
    "data.adv": WORDNET_LICENCE + (
        "00001740 02 r 01 a_cappella 0 001 \\ 02704818 a 0101 | without musical accompaniment; "
        '"they performed a cappella"  \n'),
}

GCIDE_ENTRIES = [
    # numbered senses, a quotation, a field label over lettered sub-senses, synonyms, a usage
    # note with its own quotation, a phrase
    'Abandon \\A*ban"don\\ ([.a]*b[a^]n"d[u^]n), v. t. [imp. & p. p.\n'
    '   {Abandoned} (-d[u^]nd); p. pr. & vb. n. {Abandoning}.] [OF.\n'
    '   abandoner; See {Ban}.]\n'
    '   1. To cast or drive out; to banish; to expel; to reject.\n'
    '      [Obs.]\n'
    '      [1913 Webster]\n'
    '\n'
    '            That he might . . . abandon them from him. --Udall.\n'
    '      [1913 Webster]\n'
    '\n'
    '   2. (Mar. Law)\n'
    '      (a) To relinquish all claim to; -- used when an insured\n'
    '          person gives up all claim to the property.\n'
    '      (b) To leave a {caf[\'e]} for good.\n'
    '          [1913 Webster]\n'
    '\n'
    '   Syn: To give up; yield; forego; cede; surrender.\n'
    '\n'
    '   Usage: {To Abandon}, {Desert}, {Forsake}. These words agree\n'
    '          in representing a person as giving up some object.\n'
    '          [1913 Webster]\n'
    '\n'
    '   {To abandon ship}, to leave a sinking vessel for good.\n'
    '      [1913 Webster]\n',
    # a headword continued in column 0, a one-sense entry, a derived form and a cross ref
    'Isogeothermal \\I`so*ge`o*ther"mal\\, Isogeothermic\n'
    '\\I`so*ge`o*ther"mic\\, a.\n'
    '   Pertaining to, having the nature of, or marking,\n'
    '   isogeotherms; as, an isogeothermal line. --\n'
    '   {I`so*ge`o*ther"mal*ly}, adv.\n'
    '   [1913 Webster]\n',
    'Zythem \\Zy"them\\ (z[imac]"th[e^]m), n.\n'
    '   See {Zythum}.\n'
    '   [1913 Webster]\n',
    # a phrase titling its lettered senses
    'Set \\Set\\, v. t.\n'
    '   {To set milk}.\n'
    '       (a) To expose it in open dishes in order that the cream\n'
    '           may rise to the surface.\n'
    '       (b) To cause it to become curdled as by rennet.\n'
    '           [1913 Webster]\n',
    # GCIDE's copy of WordNet 1.5
    'bullethead \\bullethead\\ n.\n'
    '   a head shaped like a bullet; "he had a bullethead".\n'
    '   [WordNet 1.5]\n',
]

FOLDOC = ("abstract data type\nADT\n\n"
          "   <programming> (ADT) A kind of {data abstraction} where a\n"
          "   type's internal form is hidden behind a set of {access\n   functions}.\n\n"
          "    *# | + 0 -\n    ---|------\n    +  | + 0 -\n\n"
          "   {Cook paper (http://wcook.org/papers/OOPvsADT/CookOOPvsADT90.pdf)}.\n\n"
          "   (2003-07-03)\n")
JARGON = ("blue wire\n n.\n\n    [IBM] Patch wires (esp. 30 AWG gauge) added to circuit boards"
          " at the\n    factory to correct design or fabrication problems.\n")
DEVIL = ("AFFLICTION, n.  An acclimatizing process preparing the soul for\n"
         "another and bitter world.\n")


def _b64(n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = alphabet[n % 64]
    while n >= 64:
        n //= 64
        out = alphabet[n % 64] + out
    return out


def _dictd(folder: Path, name: str, entries: list[str], dz: bool = True,
           extra_rows: tuple[str, ...] = ()) -> Path:
    """A dictd database of ``entries`` (blank line between), indexed by first word, with an
    ``00-database-short`` entry in front and ``extra_rows`` duplicating index rows."""
    info = "00-database-short\n   A sample dictionary\n\n"
    blob, rows, pos = info, [f"00-database-short\t{_b64(0)}\t{_b64(len(info))}"], len(info)
    for e in entries:
        rows.append(f"{e.split()[0]}\t{_b64(pos)}\t{_b64(len(e.encode()))}")
        blob += e + "\n"
        pos += len(e.encode()) + 1
    rows += [rows[1].replace(rows[1].split("\t")[0], w, 1) for w in extra_rows]
    data = blob.encode()
    path = folder / (f"{name}.dict.dz" if dz else f"{name}.dict")
    path.write_bytes(gzip.compress(data) if dz else data)
    (folder / f"{name}.index").write_text("\n".join(rows) + "\n")
    return path


# --------------------------------------------------------------------------- WordNet


def test_wordnet_files(tmp_path):
    for name, text in WORDNET.items():
        (tmp_path / name).write_text(text)
    ps = {p.id: p for p in read_wordnet(tmp_path)}
    assert list(ps) == ["wn-n-00001740", "wn-n-03541091", "wn-v-00001740", "wn-a-00001740",
                        "wn-a-00002098", "wn-r-00001740"]
    verb = ps["wn-v-00001740"]
    assert verb.title == "breathe, take a breath, respire, suspire"
    assert verb.text == "draw air into, and expel out of, the lungs"
    assert verb.examples == ("I can breathe better when the air is clean", "The patient is respiring")
    # marker (p) dropped, satellite counted as an adjective, a definition without examples
    assert ps["wn-a-00002098"].title == "sure, trusted"
    assert ps["wn-n-00001740"].examples == ()
    assert ps["wn-n-00001740"].text.endswith("(living or nonliving)")
    # a quote inside the definition's parenthesis stays with the definition
    assert ps["wn-a-00001740"].text.startswith("(usually followed by `to') having")
    assert ps["wn-n-03541091"].title == "high horse, high horse's"


def test_wordnet_errors(tmp_path):
    with pytest.raises(NestembError, match="data.noun"):
        read_wordnet(tmp_path)
    with pytest.raises(NestembError, match="not a WordNet data line"):
        parse_wordnet_line("00001740 03 n xx entity 0 | gloss")
    assert parse_wordnet_line("") is None


# --------------------------------------------------------------------------- dictd + GCIDE


def test_dictd_numbers_and_index(tmp_path):
    assert [dictd_number(_b64(n)) for n in (0, 1, 63, 64, 4095, 36605, 39951949)] == \
        [0, 1, 63, 64, 4095, 36605, 39951949]
    with pytest.raises(NestembError, match="not a dictd index number"):
        dictd_number("A*")
    (tmp_path / "bad.index").write_text("word\tA\n")
    with pytest.raises(NestembError, match="bad.index:1"):
        read_dictd_index(tmp_path / "bad.index")


@pytest.mark.parametrize("dz", [True, False])
def test_dictd_entries_once(tmp_path, dz):
    path = _dictd(tmp_path, "gcide", GCIDE_ENTRIES, dz=dz, extra_rows=("Abandoned", "abandon"))
    entries = list(read_dictd(path))
    assert [w for _, w, _ in entries] == ["Abandon", "Isogeothermal", "Zythem", "Set", "bullethead"]
    assert entries[0][2].startswith("Abandon \\A*ban")
    # an index row past the end of the data
    (tmp_path / "gcide.index").write_text(f"Abandon\t{_b64(10**6)}\t{_b64(10)}\n")
    with pytest.raises(NestembError, match="past the end"):
        list(read_dictd(path))


def test_gcide_entries(tmp_path):
    path = _dictd(tmp_path, "gcide", GCIDE_ENTRIES)
    got = [(p.title, p.kind, p.source, p.text, p.examples) for p in read_gcide(path)]
    assert got == [
        ("Abandon", "sense", "gcide", "To cast or drive out; to banish; to expel; to reject. [Obs.]",
         ("That he might . . . abandon them from him.",)),
        ("Abandon", "sense", "gcide", "(Mar. Law) To relinquish all claim to; -- used when an "
         "insured person gives up all claim to the property.", ()),
        ("Abandon", "sense", "gcide", "(Mar. Law) To leave a café for good.", ()),
        ("Abandon", "note", "gcide", "To Abandon, Desert, Forsake. These words agree in "
         "representing a person as giving up some object.", ()),
        ("To abandon ship", "phrase", "gcide", "to leave a sinking vessel for good.", ()),
        ("Isogeothermal", "sense", "gcide", "Pertaining to, having the nature of, or marking, "
         "isogeotherms; as, an isogeothermal line.", ()),
        ("Zythem", "sense", "gcide", "See Zythum.", ()),
        ("To set milk", "phrase", "gcide", "To expose it in open dishes in order that the cream "
         "may rise to the surface.", ()),
        ("To set milk", "phrase", "gcide", "To cause it to become curdled as by rennet.", ()),
        ("bullethead", "sense", "gcide-wordnet",
         'a head shaped like a bullet; "he had a bullethead".', ()),
    ]
    ids = [p.id for p in read_gcide(path)]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"gcide-\d+-\d+", i) for i in ids)
    assert not keep_text("See Zythum.")
    with pytest.raises(NestembError, match="apt-get install dict-gcide"):
        read_gcide(tmp_path / "none.dict.dz")


def test_gcide_markup():
    assert clean_gcide_text("{Caf['e]} na[i^]ve [=a] [ae]ther [Obs.] [R.]") == \
        "Café naĭve ā æther [Obs.] [R.]"
    assert parse_gcide_entry("") == []
    # an entry with no definition at all yields nothing
    assert parse_gcide_entry("Zygophyllaceae \\Zy`go*phyl*la\"ce*ae\\, prop. n.\n") == []


def test_prose_dictd(tmp_path):
    foldoc = parse_dictd_paragraphs(FOLDOC, "foldoc", 3)
    assert [(p.id, p.title, p.text) for p in foldoc] == [
        ("foldoc-3-1", "abstract data type", "(ADT) A kind of data abstraction where a type's "
         "internal form is hidden behind a set of access functions.")]  # table, link, date gone
    jargon = parse_dictd_paragraphs(JARGON, "jargon")
    assert [p.text for p in jargon] == ["Patch wires (esp. 30 AWG gauge) added to circuit boards "
                                        "at the factory to correct design or fabrication problems."]
    devil = parse_dictd_paragraphs(DEVIL, "devil")
    assert [(p.title, p.text) for p in devil] == [
        ("Affliction", "An acclimatizing process preparing the soul for another and bitter world.")]
    path = _dictd(tmp_path, "foldoc", [FOLDOC])
    assert [p.source for p in read_dictd_paragraphs(path)] == ["foldoc"]


# --------------------------------------------------------------------------- prose


def test_kjv_fortunes_html():
    out = ("\nGenesis 1\n\n  1 In the beginning God created the heaven and the earth.\n"
           "  2 And the earth was without form, and void.\n\n1 Samuel 3\n\n"
           "  10 And the LORD came, and stood, and called as at other times.\n")
    assert [p.id for p in parse_kjv(out)] == ["kjv-Genesis-1-1", "kjv-Genesis-1-2",
                                              "kjv-1_Samuel-3-10"]
    cookies = parse_fortunes("A day for firm decisions!!!!!  Or is it?\n%\n"
                             "   ___\n  (o o)\n   \\_/\n%\nShort one.\n%\n", "cookie")
    assert [(p.id, p.text) for p in cookies] == [("fortune-cookie-1",
                                                  "A day for firm decisions!!!!! Or is it?")]
    page = ("<html><head><title>4. More Control Flow Tools &#8212; Python 3.11.2 documentation"
            "</title></head><body><p>Besides the <code>while</code> statement just introduced, "
            "Python uses the usual flow control statements.</p><p>See also</p>"
            "<div><p>Outer <p>inner</p> text that is long enough here.</p></div></body></html>")
    paras = parse_html_paragraphs(page, "pydoc-tutorial.controlflow", "pydoc")
    assert [(p.id, p.title) for p in paras][0] == ("pydoc-tutorial.controlflow-1",
                                                   "4. More Control Flow Tools")
    assert paras[0].text == ("Besides the while statement just introduced, Python uses the "
                             "usual flow control statements.")
    assert len(paras) == 2 and "inner" in paras[1].text


# --------------------------------------------------------------------------- assembly


def _synsets(n: int) -> list[Passage]:
    return [Passage(f"wn-n-{i:08d}", f"word{i}", f"the meaning of word number {i}", "wordnet",
                    "definition", (f"we used word{i} in a sentence today", "too short"))
            for i in range(n)]


def test_assemble_queries_and_filters():
    extra = [
        Passage("gcide-1-1", "word3", "a gloss; \"we used word3 in a sentence today\".", "gcide",
                "sense"),                                       # quotes a query: a leak
        Passage("gcide-2-1", "word0", "the meaning of word number 0", "gcide", "sense"),
        Passage("gcide-3-1", "word1", "the meaning of word number 1", "gcide-wordnet", "sense"),
        Passage("gcide-4-1", "Zythem", "See Zythum.", "gcide", "sense"),
        Passage("fortune-x-1", "", "!!! ??? ... ---- ####", "fortunes", "cookie"),
        Passage("pgdoc-a-1", "Page", "This paragraph mentions the meaning of word in passing "
                "and is long.", "pgdoc", "paragraph"),
    ]
    c = assemble_corpus(_synsets(10) + extra, n_queries=10, seed=0)
    assert len(c.queries) == 10 and all(c.qrels[q] == {q[2:-3]: 1} for q, _ in c.queries)
    ids = {p.id for p in c.corpus}
    assert all(d in ids for docs in c.qrels.values() for d in docs)          # relevant kept
    assert not ids & {f"{d}-x1" for docs in c.qrels.values() for d in docs}   # queries held out
    # gcide-1-1 quotes a query; gcide-2-1 repeats wn-n-00000000; the pgdoc paragraph shares
    # only a short phrase with the definitions
    assert "gcide-1-1" not in ids and "gcide-2-1" not in ids and "pgdoc-a-1" in ids
    assert c.dropped == {"not_prose": 11, "duplicate": 1, "gcide_wordnet_copy": 1,
                         "short_or_cross_reference": 1, "query": 10, "contains_query": 1}
    # seeded: the same seed draws the same queries, another seed others
    c2 = assemble_corpus(_synsets(50), n_queries=5, seed=1)
    assert c2.queries == assemble_corpus(_synsets(50), n_queries=5, seed=1).queries
    assert c2.queries != assemble_corpus(_synsets(50), n_queries=5, seed=2).queries
    with pytest.raises(NestembError, match="only 10 synsets"):
        assemble_corpus(_synsets(10), n_queries=11)
    with pytest.raises(NestembError, match="repeated"):
        assemble_corpus(_synsets(2) + _synsets(1), n_queries=1)


def test_leak_rule():
    """A passage quoting a query is dropped; a short shared phrase in a long passage is not."""
    syn = [Passage("wn-n-1", "skull base", "the lowest part of the skull", "wordnet", "definition",
                   ("at the base of the skull",))]  # a 6-word query
    syn2 = [Passage("wn-n-2", "tier", "a level", "wordnet", "definition", ("on the top tier",))]
    long_ = "a bone that sits at the base of the skull and holds up the brain of most animals"
    others = [
        Passage("gcide-1-1", "sphenoid", long_, "gcide", "sense"),                 # 6 words: leak
        Passage("gcide-2-1", "cake", "a cake served in layers, each on the top tier of a stand, "
                "for weddings and other large feasts", "gcide", "sense"),         # 4 in 19: kept
        Passage("gcide-3-1", "tier", "one row; as, on the top tier", "gcide", "sense"),  # a third
    ]
    c = assemble_corpus(syn + syn2 + others, n_queries=2, seed=0)
    assert {p.id for p in c.corpus} == {"wn-n-1", "wn-n-2", "gcide-2-1"}
    assert c.dropped == {"query": 2, "contains_query": 2}


def test_build_folder(tmp_path):
    src = {"toy": TextSource("toy", (), lambda: _synsets(20))}
    out = tmp_path / "corpus"
    man = build_text_corpus(out, src, n_queries=4, seed=3)
    data = load_beir(out)
    assert len(data.corpus) == man["counts"]["corpus"] == 36
    assert len(data.queries) == 4 and man["queries"]["seed"] == 3
    for name, digest in man["sha256"].items():
        assert sha256_file(out / name) == digest
    rows = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines()]
    assert man["texts_sha256"]["corpus"] == sha256_texts(
        f"{r['title']} {r['text']}".strip() for r in rows)
    assert json.loads((out / "manifest.json").read_text()) == man
    assert read_marker(out)["kind"] == "text-corpus"
    with pytest.raises(NestembError, match="not empty"):
        build_text_corpus(out, src, n_queries=4)
    build_text_corpus(out, src, n_queries=4, seed=3, overwrite=True)
    assert sha256_file(out / "corpus.jsonl") == man["sha256"]["corpus.jsonl"]  # reproducible
    with pytest.raises(NestembError, match="unknown source"):
        build_text_corpus(tmp_path / "other", ["wordnet", "encyclopedia"])


def test_install_script_lists_the_packages():
    script = (REPO / "scripts" / "install-text-corpus.sh").read_text()
    listed = re.search(r'^PACKAGES="([^"]*)"', script, re.M).group(1).split()
    assert listed == list(PACKAGES)


# --------------------------------------------------------------------------- installed


@pytest.mark.slow
@pytest.mark.skipif(not (Path("/usr/share/wordnet/data.noun").is_file()
                         and Path("/usr/share/dictd/gcide.dict.dz").is_file()),
                    reason="wordnet-base and dict-gcide are not installed "
                           "(make test installs them as root: `make dictionaries`)")
def test_installed_wordnet_and_gcide():
    wn = SOURCES["wordnet"].read()
    assert len(wn) == 117659                                  # WordNet 3.0's synsets
    assert sum(len(p.examples) for p in wn) > 45000
    breathe = next(p for p in wn if p.id == "wn-v-00001740")
    assert breathe.text == "draw air into, and expel out of, the lungs"
    gcide = SOURCES["gcide"].read()
    assert len(gcide) > 200000
    first = next(p for p in gcide if p.title == "Abandon")
    assert first.text == "To cast or drive out; to banish; to expel; to reject. [Obs.]"
    assert not any("\\" in p.text or "[1913 Webster]" in p.text for p in gcide)
