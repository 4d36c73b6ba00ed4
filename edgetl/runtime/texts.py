"""Labelled texts as users keep them: a CSV or JSONL file with a text and a label column, or a
folder per label of `.txt` files, one example per line.

The host reads training data with it and the device reads `adapt --data texts.csv` and
`check --data` with it, so both take exactly the same files. Standard library only (the csv
module: intents hold commas and newlines inside quotes). Every problem is one `InputError`
naming the file and, where it has one, the line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from edgetl.errors import InputError

TEXT_SUFFIXES = (".csv", ".jsonl", ".tsv")
TEXT_COLUMNS = ("text", "sentence", "utterance", "query")
LABEL_COLUMNS = ("label", "category", "intent", "class")


def is_text_data(path: str | Path) -> bool:
    """Whether `path` holds labelled texts (a .csv/.tsv/.jsonl file, or DIR/<label>/*.txt), not images."""
    path = Path(path)
    if path.is_file() or path.suffix.lower() in TEXT_SUFFIXES:
        return path.suffix.lower() in (*TEXT_SUFFIXES, ".txt")
    if not path.is_dir():
        return False
    return any(p.suffix == ".txt" for folder in path.iterdir() if folder.is_dir() for p in folder.iterdir())


def labelled_texts(path: str | Path, *, text_column: str | None = None, label_column: str | None = None,
                   column_flags: bool = False) -> tuple[list[str], list[str]]:
    """(texts, labels) of a labelled text file or folder; `text_column`/`label_column` name the columns of a
    table whose names are not the usual ones (text/sentence/utterance/query, label/category/intent/class);
    `column_flags`: the hints name `--text-column`/`--label-column` (the commands that have them)."""
    path = Path(path)
    if text_column is not None and text_column == label_column:
        raise InputError(f"--text-column and --label-column are both {text_column!r}",
                         "name two different columns")
    if path.is_dir():
        texts, labels = _folder(path)
    elif not path.is_file():
        raise InputError(f"{path} does not exist", "pass a .csv or .jsonl file of texts and labels, or "
                                                   "DIR/<label>/*.txt")
    elif path.suffix.lower() == ".txt":
        raise InputError(f"{path.name} has no labels", "put it in a folder named for its label: DIR/<label>/"
                                                       f"{path.name}, one example a line, and pass DIR")
    elif path.suffix.lower() not in TEXT_SUFFIXES:
        raise InputError(f"{path.name} is not a text table", "labelled texts are a .csv, .tsv or .jsonl file, "
                                                             "or DIR/<label>/*.txt")
    elif path.suffix.lower() == ".jsonl":
        texts, labels = _jsonl(path, text_column, label_column, column_flags)
    else:
        texts, labels = _table(path, text_column, label_column, column_flags)
    if not texts:
        raise InputError(f"{path} holds no labelled texts", "one example per row: a text and its label")
    return texts, labels


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})",
                         "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}", "check the path and its permissions") from None


def _column(names: list[str], given: str | None, usual: tuple[str, ...], what: str, path: Path,
            flags: bool = False) -> str:
    if given is not None:
        if given not in names:
            raise InputError(f"{path.name} has no {what} column {given!r} (columns: {', '.join(names)})",
                             f"name one of its columns as the {what} column")
        return given
    lowered = {n.strip().lower(): n for n in names}
    found = next((lowered[u] for u in usual if u in lowered), None)
    if found is None:
        raise InputError(f"{path.name} has no {what} column (columns: {', '.join(names) or 'none'})",
                         f"name it one of {', '.join(usual)}" + (f", or pass --{what}-column NAME" if flags else ""))
    return found


def _example(text, label, where: str) -> tuple[str, str]:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: empty text", "every example needs a text; remove the row")
    if label is None or (isinstance(label, str) and not label.strip()) or isinstance(label, bool | list | dict):
        raise InputError(f"{where}: missing label", "every example needs a label; remove the row or label it")
    return text.strip(), str(label).strip()


def _table(path: Path, text_column, label_column, flags: bool) -> tuple[list[str], list[str]]:
    rows = csv.reader(_read(path).splitlines(keepends=True), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        header = next(rows, None)
        if header is None:
            return [], []
        t = header.index(_column(header, text_column, TEXT_COLUMNS, "text", path, flags))
        lab = header.index(_column(header, label_column, LABEL_COLUMNS, "label", path, flags))
        texts, labels = [], []
        for row in rows:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path.name} line {rows.line_num}"
            if len(row) != len(header):
                raise InputError(f"{where}: {len(row)} fields, the header has {len(header)}",
                                 "quote texts that hold the delimiter (\"...\")")
            text, label = _example(row[t], row[lab], where)
            texts.append(text)
            labels.append(label)
    except csv.Error as exc:
        raise InputError(f"{path.name} line {rows.line_num}: not CSV ({exc})", "check the quoting") from None
    return texts, labels


def _jsonl(path: Path, text_column, label_column, flags: bool) -> tuple[list[str], list[str]]:
    texts, labels, keys = [], [], None
    for number, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{where}: not JSON ({exc.msg})", "one JSON object per line") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: not a JSON object", 'one object per line: {"text": ..., "label": ...}')
        if keys is None:
            keys = (_column(list(row), text_column, TEXT_COLUMNS, "text", path, flags),
                    _column(list(row), label_column, LABEL_COLUMNS, "label", path, flags))
        text, label = _example(row.get(keys[0]), row.get(keys[1]), where)
        texts.append(text)
        labels.append(label)
    return texts, labels


def _folder(root: Path) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".txt"):
            for line in _read(file).splitlines():
                if line.strip():
                    texts.append(line.strip())
                    labels.append(folder.name)
    if not texts:
        raise InputError(f"no labelled texts in {root}", "expected DIR/<label>/*.txt, one example per line")
    return texts, labels


def as_texts(texts) -> list[str]:
    """`texts` (one string, or a list of them) as a list of non-empty strings, or a one-line error."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list | tuple) or not texts:
        raise InputError(f"a text model takes a sentence or a list of them, not {type(texts).__name__}",
                         'e.g. model.predict(["turn on the lights"])')
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"text {i} is {'empty' if isinstance(t, str) else type(t).__name__}",
                             "pass non-empty strings")
    return list(texts)
