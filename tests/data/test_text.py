"""Labelled text data as users keep it: CSV (quotes, commas and newlines inside), JSONL, a folder per label."""

from __future__ import annotations

import json

import pytest

from edgetl.data import text as textdata
from edgetl.errors import DataError, InputError
from edgetl.runtime.texts import as_texts, is_text_data, labelled_texts
from tests.texts import sentences, write_csv


def test_a_csv_with_quoted_commas_and_newlines_reads_row_by_row(tmp_path):
    path = tmp_path / "intents.csv"
    path.write_text('text,category\n"card, lost",lost_card\n"two\nlines",lost_card\nhello,greeting\n',
                    encoding="utf-8")
    texts, labels = labelled_texts(path)
    assert texts == ["card, lost", "two\nlines", "hello"]
    assert labels == ["lost_card", "lost_card", "greeting"]


def test_jsonl_and_a_folder_per_label_read_the_same_examples(tmp_path):
    rows = [("turn on the lights", "on"), ("lights off", "off"), ("switch it on", "on")]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": t, "intent": lab}) for t, lab in rows) + "\n")
    for t, lab in rows:
        folder = tmp_path / "dir" / lab
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "examples.txt").open("a") as f:
            f.write(t + "\n\n")
    assert is_text_data(tmp_path / "t.jsonl") and is_text_data(tmp_path / "dir")
    by_jsonl = sorted(zip(*labelled_texts(tmp_path / "t.jsonl"), strict=True))
    by_folder = sorted(zip(*labelled_texts(tmp_path / "dir"), strict=True))
    assert by_jsonl == by_folder == sorted(rows)


def test_named_columns_are_taken_when_the_usual_ones_are_absent(tmp_path):
    path = write_csv(tmp_path / "t.csv", [("hi", "a"), ("bye", "b")], header=("utterance_text", "tag"))
    with pytest.raises(InputError, match="no text column.*utterance_text") as exc:
        labelled_texts(path)
    assert "--text-column" not in exc.value.hint  # the device's adapt has no such flag to name
    with pytest.raises(InputError) as exc:
        labelled_texts(path, column_flags=True)
    assert "--text-column NAME" in exc.value.hint  # edgetl finetune has it
    texts, labels = labelled_texts(path, text_column="utterance_text", label_column="tag")
    assert texts == ["hi", "bye"] and labels == ["a", "b"]


@pytest.mark.parametrize("content, match", [
    (b"text,label\n,greeting\n", "line 2: empty text"),
    (b"text,label\nhello,\n", "line 2: missing label"),
    (b"text,label\ncaf\xe9,greeting\n", "not UTF-8"),
    (b"sentence\nhello\n", "no label column"),
    (b"text,label\nhello,a,extra\n", "3 fields, the header has 2"),
])
def test_bad_tables_are_one_line_naming_the_line(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        labelled_texts(path)


def test_a_single_class_or_an_unknown_label_is_refused(tmp_path):
    one = write_csv(tmp_path / "one.csv", [("a", "x"), ("b", "x")])
    with pytest.raises(DataError, match="single class"):
        textdata.read(one)
    train = textdata.read(write_csv(tmp_path / "train.csv", [("a", "x"), ("b", "y")]))
    with pytest.raises(DataError, match="label.*the training data lacks: z"):
        textdata.read(write_csv(tmp_path / "test.csv", [("c", "z")]), train.classes, what="test")


def test_the_split_is_stratified_seeded_and_stable_when_examples_are_added(tmp_path):
    rows = sentences(10, seed=1)
    data = textdata.read(write_csv(tmp_path / "a.csv", rows))
    train, val = textdata.split_train_val(data, 0.2, seed=0)
    assert len(val) == 8 and sorted(set(val.labels)) == [0, 1, 2, 3]  # 2 of each of 4 classes
    again = textdata.split_train_val(data, 0.2, seed=0)[1]
    assert again.texts == val.texts
    assert textdata.split_train_val(data, 0.2, seed=1)[1].texts != val.texts
    more = textdata.read(write_csv(tmp_path / "b.csv", rows + [("a brand new phrasing", "weather")] * 1))
    moved = set(val.texts) - set(textdata.split_train_val(more, 0.2, seed=0)[1].texts)
    assert len(moved) <= 1  # one class grew past a rounding step: at most one example changes side


def test_a_model_takes_a_sentence_or_a_list_of_them():
    assert as_texts("hello") == ["hello"]
    with pytest.raises(InputError, match="text 1 is empty"):
        as_texts(["ok", "  "])
    with pytest.raises(InputError, match="not int"):
        as_texts(3)
