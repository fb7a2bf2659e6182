"""SynthBias (apple/ml-synthbias; CC BY-NC-ND 4.0) read verbatim from a user-given path, as coreference multiple choice.

The licence allows only verbatim copies, so the file is never bundled nor rewritten: it is read where the user keeps
it and split at run time. `type1` rows are ambiguous (validated by annotators as resolvable either way); `type2`
rows are unambiguous with `occ_1` the referent. Train/test is a seeded split of sentence groups, a group being the
sentence and its pronoun-swapped counterpart, so no sentence is seen in training with one pronoun and tested with the
other.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from datasets import DatasetDict

from ..csv_records import NumberedReader
from ..occupations import canonical_occupation, known_occupations, share_women
from .coreference import CorefItem, coreference_split, mentions
from .gendered import PRONOUN_GENDER, pronoun_gender
from .rows import RowErrors, dataset_dict, log_skipped
from .sampling import split_groups

FILE_NAME = "synthbias_data.csv"
COLUMNS = ("type", "sample", "occ_1", "occ_2", "pronoun", "is_stereotypical")
_PRONOUNS = re.compile(r"\b(" + "|".join(PRONOUN_GENDER) + r")\b", re.IGNORECASE)


def _item(row: dict, where: str) -> CorefItem:
    """One CSV row as an item; ValueError says what is wrong with it."""
    if None in row or any(row[column] is None for column in COLUMNS):
        raise ValueError(f"expected {len(COLUMNS)} fields ({','.join(COLUMNS)})")
    kind, sample, pronoun = row["type"].strip(), row["sample"].strip(), row["pronoun"].strip()
    if kind not in ("type1", "type2"):
        raise ValueError(f"type must be type1 or type2, got {kind!r}")
    expected = ("ambiguous",) if kind == "type1" else ("True", "False")
    if row["is_stereotypical"].strip() not in expected:
        raise ValueError(f"is_stereotypical of a {kind} row must be one of {expected}, got {row['is_stereotypical']!r}")
    pronoun_gender(pronoun)
    if not re.search(rf"\b{re.escape(pronoun)}\b", sample, re.IGNORECASE):
        raise ValueError(f"pronoun {pronoun!r} not in the sample")
    referent, other = canonical_occupation(row["occ_1"]), canonical_occupation(row["occ_2"])
    occupations = [name for name in mentions(sample) if name in (referent, other)]
    if referent == other or len(occupations) != 2:
        raise ValueError(f"the sample must mention two different occupations {row['occ_1']!r} and {row['occ_2']!r}")
    group = _PRONOUNS.sub("<pronoun>", sample.lower())
    return CorefItem(sample, tuple(occupations), pronoun, None if kind == "type1" else occupations.index(referent),
                     where, group)


def read_synthbias(path: str | os.PathLike, errors: str = "raise") -> tuple[list[CorefItem], list[str]]:
    """(items, skipped rows) of `synthbias_data.csv` (`path` is the file or its folder), in file order."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"SynthBias file not found: {path} (get {FILE_NAME} from "
                                f"https://github.com/apple/ml-synthbias; it cannot be bundled: CC BY-NC-ND)")
    stat = path.stat()
    table = tuple((name, share_women(name)) for name in known_occupations())
    items, skipped = _parse(path.resolve(), stat.st_mtime_ns, stat.st_size, errors, table)
    log_skipped(f"SynthBias {path}", list(skipped))
    return list(items), list(skipped)


@functools.lru_cache(maxsize=2)
def _parse(path: Path, mtime_ns: int, size: int, errors: str,
           table: tuple) -> tuple[tuple[CorefItem, ...], tuple[str, ...]]:
    """Parsed once per file version and occupation table (the key), so a sweep over seeds reads the file once."""
    policy = RowErrors(errors, f"SynthBias {path}")
    items = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = NumberedReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: header must be {','.join(COLUMNS)}, got {reader.fieldnames}")
        for row in reader:
            where = f"{path.name} {reader.where}"
            try:
                items.append(_item(row, where))
            except ValueError as error:  # includes UnknownOccupationError
                policy(where, error)
    return tuple(items), tuple(policy.skipped)


def load_synthbias(path: str | os.PathLike, *, seed: int = 0, n_train: int | None = 600,
                   n_train_unambiguous: int | None = 0, n_test: int | None = None,
                   n_test_unambiguous: int | None = None, test_fraction: float = 0.5, both_orders: bool = False,
                   dont_know: bool = False, errors: str = "raise") -> DatasetDict:
    """SynthBias as a DatasetDict; sizes count sentences per kind (ambiguous = type1, unambiguous = type2)."""
    items, skipped = read_synthbias(path, errors)
    test_groups = split_groups([item.group for item in items], test_fraction, seed)
    splits = {}
    for split, n_ambiguous, n_unambiguous in (("train", n_train, n_train_unambiguous),
                                              ("test", n_test, n_test_unambiguous)):
        pool = [item for item in items if (item.group in test_groups) == (split == "test")]
        splits[split] = coreference_split(pool, task="synthbias", split=split, n_ambiguous=n_ambiguous,
                                          n_unambiguous=n_unambiguous, seed=seed, both_orders=both_orders,
                                          dont_know=dont_know)
    return dataset_dict(splits["train"], splits["test"], skipped)
