"""STS-B, SNLI, MRPC and generic pair readers on the shared files and on broken ones."""

from __future__ import annotations

import pytest

from nestemb.data.pairs import read_mrpc, read_nli_triplets, read_pairs, read_sts
from nestemb.errors import NestembError


def test_stsb_counts_and_extra_fields(shared_data):
    assert [len(read_sts(shared_data / "stsb" / f"sts-{s}.csv")) for s in ("train", "dev", "test")] == [5749, 1500, 1379]
    first = read_sts(shared_data / "stsb" / "sts-test.csv")[0]
    assert first == ("A girl is styling her hair.", "A girl is brushing her hair.", 2.5)


def test_sts_trailing_fields_ignored(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("a\tb\tc\td\t3.0\tx \"quoted\tbut\ty\textra\tmore\n")
    assert read_sts(p) == [('x "quoted', "but", 3.0)]


def test_sts_non_numeric_score(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("a\tb\tc\td\t3.0\tx\ty\na\tb\tc\td\tabc\tx\ty\n")
    with pytest.raises(NestembError, match=r"s.csv:2: score 'abc' is not a number"):
        read_sts(p)


def test_sts_short_row_and_missing(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("a\tb\tc\n")
    with pytest.raises(NestembError, match=r"s.csv:1: expected at least 7"):
        read_sts(p)
    with pytest.raises(NestembError, match="STS file not found"):
        read_sts(tmp_path / "missing.csv")


def test_mrpc_shared_files(shared_data):
    train = read_mrpc(shared_data / "mrpc" / "msr_paraphrase_train.txt")
    assert len(train) == 4076
    assert all(not s2.endswith("\r") for _, s2, _ in train)
    assert len(read_mrpc(shared_data / "mrpc" / "msr_paraphrase_test.txt")) == 1725


def test_mrpc_bom_crlf_and_minus_one(tmp_path):
    """Synthetic, so it runs without the shared data."""
    p = tmp_path / "m.txt"
    p.write_bytes("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t1\t2\ta\tb\r\n0\t-1\t-1\tc\td\r\n".encode())
    assert read_mrpc(p) == [("a", "b", 1)]
    p.write_bytes(b"Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\nyes\t1\t2\ta\tb\r\n")
    with pytest.raises(NestembError, match=r"m.txt:2: label 'yes'"):
        read_mrpc(p)


def test_snli_triplets(shared_data):
    t = read_nli_triplets(shared_data / "snli")
    assert len(t) > 5000
    p, e, c = t[0]
    assert p and e and c and e != c


def test_snli_errors(tmp_path):
    with pytest.raises(NestembError, match="NLI folder not found"):
        read_nli_triplets(tmp_path / "x")
    (tmp_path / "s1.dev").write_text("p\n")
    (tmp_path / "s2.dev").write_text("h\n")
    (tmp_path / "labels.dev").write_text("maybe\n")
    with pytest.raises(NestembError, match=r"labels.dev:1: unknown label 'maybe'"):
        read_nli_triplets(tmp_path)
    (tmp_path / "labels.dev").write_text("entailment\nneutral\n")
    with pytest.raises(NestembError, match="different line counts"):
        read_nli_triplets(tmp_path)


def test_generic_pairs(tmp_path):
    p = tmp_path / "p.tsv"
    p.write_text("q1\td1\tn1\nq2\td2\tn2\n")
    assert read_pairs(p) == [("q1", "d1", "n1"), ("q2", "d2", "n2")]
    p.write_text("q1\td1\nq2\td2\tn2\n")
    with pytest.raises(NestembError, match=r"p.tsv:2: 3 fields, earlier lines have 2"):
        read_pairs(p)
    p.write_text("only one field\n")
    with pytest.raises(NestembError, match=r"p.tsv:1: expected 2 or 3"):
        read_pairs(p)


def test_sts_non_utf8_names_line(tmp_path):
    p = tmp_path / "s.csv"
    p.write_bytes("a\tb\tc\td\t3.0\tx\ty\na\tb\tc\td\t2.0\tcaf\u00e9\ty\n".encode("latin-1"))
    with pytest.raises(NestembError, match=r"s.csv:2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        read_sts(p)


@pytest.mark.parametrize("score", ["inf", "-inf", "nan", "Infinity"])
def test_sts_non_finite_score(tmp_path, score):
    p = tmp_path / "s.csv"
    p.write_text(f"a\tb\tc\td\t3.0\tx\ty\na\tb\tc\td\t{score}\tx\ty\n")
    with pytest.raises(NestembError, match=rf"s.csv:2: score '{score}' is not a finite number"):
        read_sts(p)


def test_evaluate_sts_refuses_constant_or_non_finite_scores():
    import numpy as np

    from nestemb.eval.sts import evaluate_sts

    e1 = np.eye(3, dtype=np.float32)
    e2 = np.ones((3, 3), dtype=np.float32)
    with pytest.raises(NestembError, match=r"scores are all equal \(2\): Spearman correlation is undefined"):
        evaluate_sts(e1, e2, [2.0, 2.0, 2.0], [3])
    with pytest.raises(NestembError, match="scores must be finite numbers, got inf"):
        evaluate_sts(e1, e2, [1.0, float("inf"), 2.0], [3])


def test_eval_sts_constant_scores_named_before_loading_the_model(tmp_path):
    from nestemb.text.evaluate import run_eval_sts

    p = tmp_path / "s.csv"
    p.write_text("a\tb\tc\td\t4\tx\ty\na\tb\tc\td\t4.0\tu\tv\n")
    # the model does not exist: the data error comes first
    with pytest.raises(NestembError, match=r"the scores in .*s.csv are all equal \(4\)"):
        run_eval_sts(p, tmp_path / "no-model", [8])
