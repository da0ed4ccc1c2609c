"""BEIR folder reader: real SciFact counts and every malformed-folder error."""

from __future__ import annotations

import json

import pytest

from nestemb.data.beir import BeirData, beir_corpus_texts, load_beir, read_qrels
from nestemb.errors import NestembError


def _folder(tmp_path, corpus=None, queries=None, qrels="q1\td1\t1\n", split="test"):
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    corpus = corpus if corpus is not None else [{"_id": "d1", "title": "T", "text": "body"},
                                                {"_id": "d2", "title": "", "text": "other"}]
    queries = queries if queries is not None else [{"_id": "q1", "text": "claim"}]
    (d / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    (d / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (d / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return d


def test_scifact_counts(shared_data):
    train = load_beir(shared_data / "scifact", "train")
    test = load_beir(shared_data / "scifact", "test")
    assert len(train.corpus) == 5183 and len(train.pairs()) == 919 and len(train.queries) == 809
    assert len(test.queries) == 300 and sum(len(v) for v in test.qrels.values()) == 339


def test_title_joined_and_pairs(tmp_path):
    d = load_beir(_folder(tmp_path))
    assert d.corpus == {"d1": "T body", "d2": "other"}
    assert d.pairs() == [("claim", "T body")]
    assert isinstance(d, BeirData)
    assert sorted(beir_corpus_texts(tmp_path / "beir")) == ["T body", "other"]


def test_zero_relevance_is_not_a_pair(tmp_path):
    d = load_beir(_folder(tmp_path, qrels="q1\td1\t1\nq1\td2\t0\n"))
    assert d.pairs() == [("claim", "T body")]


def test_missing_folder(tmp_path):
    with pytest.raises(NestembError, match="BEIR folder not found"):
        load_beir(tmp_path / "nope")


def test_missing_split_lists_present(tmp_path):
    d = _folder(tmp_path)
    with pytest.raises(NestembError, match=r"qrels file not found: .*train.tsv \(splits present: \['test'\]\)"):
        load_beir(d, "train")


def test_missing_corpus(tmp_path):
    d = _folder(tmp_path)
    (d / "corpus.jsonl").unlink()
    with pytest.raises(NestembError, match="corpus file not found"):
        load_beir(d)


def test_bad_json_line_names_file_and_line(tmp_path):
    d = _folder(tmp_path)
    with open(d / "corpus.jsonl", "a") as f:
        f.write('{"_id": "d3", "text": \n')
    with pytest.raises(NestembError, match=r"corpus.jsonl:3: not valid JSON"):
        load_beir(d)


def test_json_without_id(tmp_path):
    d = _folder(tmp_path, queries=[{"text": "no id"}])
    with pytest.raises(NestembError, match=r"queries.jsonl:1: _id must be a non-empty string, got None"):
        load_beir(d)


def test_unknown_corpus_id_names_line(tmp_path):
    d = _folder(tmp_path, qrels="q1\td1\t1\nq1\td9\t1\n")
    with pytest.raises(NestembError, match=r"test.tsv:3: corpus id 'd9' is not in"):
        load_beir(d)


def test_unknown_query_id_names_line(tmp_path):
    d = _folder(tmp_path, qrels="q7\td1\t1\n")
    with pytest.raises(NestembError, match=r"test.tsv:2: query id 'q7' is not in"):
        load_beir(d)


def test_empty_split(tmp_path):
    d = _folder(tmp_path, qrels="")
    with pytest.raises(NestembError, match="split 'test' is empty"):
        load_beir(d)


def test_qrels_bad_rows(tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(NestembError, match=r"q.tsv:2: expected 3 tab-separated fields"):
        read_qrels(p)
    p.write_text("q1\td1\thigh\n")
    with pytest.raises(NestembError, match=r"q.tsv:1: score 'high' is not a number"):
        read_qrels(p)


@pytest.mark.parametrize("name, line", [("corpus.jsonl", 2), ("queries.jsonl", 1), ("qrels/test.tsv", 2)])
def test_non_utf8_file_names_file_and_line(tmp_path, name, line):
    # issue 9: a latin-1 file was a UnicodeDecodeError traceback
    d = _folder(tmp_path, corpus=[{"_id": "d1", "text": "body"}, {"_id": "d2", "text": "caf\u00e9"}],
                queries=[{"_id": "q1", "text": "caf\u00e9"}], qrels="q1\td1\t1\n")
    p = d / name
    text = p.read_text(encoding="utf-8").replace("\\u00e9", "\u00e9")  # JSON escape -> the letter
    if name.startswith("qrels"):
        text = text.replace("q1\td1", "q\u00e91\td1")
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(NestembError, match=rf"{name}:{line}: not UTF-8 text \(byte 0xe9"):
        load_beir(d)


def test_utf8_bom_and_crlf_are_read(tmp_path):
    d = _folder(tmp_path)
    p = d / "corpus.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes().replace(b"\n", b"\r\n"))
    assert load_beir(d).corpus == {"d1": "T body", "d2": "other"}
