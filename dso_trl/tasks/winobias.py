"""WinoBias (Zhao et al., 2018; MIT): the bundled bracketed sentence files as coreference multiple choice.

Lines look like `1 [The developer] argued with the designer because [he] did not like the design.`: the first
bracket is the gold antecedent, the following ones the pronoun(s) referring to it. The displayed sentence drops the
brackets and repairs the files' tokenisation slips ("notified the [the chief]" -> "notified the chief",
"designer 's" -> "designer's"). The candidate occupations are those mentioned before the first pronoun (one type-2
line names a third occupation after it: "... and reported [him] to the manager").

Splits: the `.dev` files are the train split and the `.test` files the test split (the official partition).
Type 1 sentences (no syntactic cue; the gold referent needs world knowledge) are ambiguous rows by default, following
SynthBias' convention, so that DSO can train on them; `ambiguous_type1=False` keeps their gold referent (the classic
WinoBias pro/anti accuracy gap). Type 2 sentences (resolvable from syntax) are always unambiguous.
"""

from __future__ import annotations

import re
from importlib import resources

from datasets import DatasetDict

from ..occupations import canonical_occupation
from .coreference import CorefItem, coreference_split, mentions
from .gendered import pronoun_gender
from .rows import TaskDataError, dataset_dict

FILES = tuple(f"{kind}_stereotyped_type{kind_type}.txt.{part}"
              for part in ("dev", "test") for kind_type in (1, 2) for kind in ("pro", "anti"))
_BRACKET = re.compile(r"\[([^\[\]]*)\]")


def parse_line(line: str) -> tuple[int, str, tuple[str, str], int, str]:
    """(number, sentence, the two candidate occupations in order, index of the referent, first pronoun).

    Raises ValueError saying what is wrong with the line.
    """
    match = re.fullmatch(r"(\d+) (.+)", line.strip())
    if not match:
        raise ValueError("expected 'N sentence'")
    number, body = int(match.group(1)), match.group(2)
    brackets = list(_BRACKET.finditer(body))
    outside = _BRACKET.sub("", body)
    if "[" in outside or "]" in outside:
        raise ValueError("unbalanced brackets")
    if len(brackets) < 2:
        raise ValueError(f"expected an occupation and a pronoun in brackets, found {len(brackets)} bracket(s)")
    mention = re.sub(r"^(the|a|an)\s+", "", brackets[0].group(1).strip(), flags=re.IGNORECASE)
    referent = canonical_occupation(mention)
    pronouns = [b.group(1).strip() for b in brackets[1:]]
    if len({pronoun_gender(p) for p in pronouns}) != 1:
        raise ValueError(f"pronouns of different genders: {pronouns}")
    before_pronoun = _BRACKET.sub(r"\1", body[: brackets[1].start()])
    candidates = mentions(before_pronoun)
    if len(candidates) != 2 or referent not in candidates:
        raise ValueError(f"expected the referent {referent!r} and one other occupation before the pronoun, "
                         f"found {candidates}")
    sentence = _clean(_BRACKET.sub(lambda b: b.group(1).strip(), body))
    return number, sentence, tuple(candidates), candidates.index(referent), pronouns[0]


def _clean(sentence: str) -> str:
    sentence = re.sub(r"\b(the) the\b", r"\1", sentence, flags=re.IGNORECASE)
    sentence = sentence.replace(" 's", "'s")
    return re.sub(r"\s+", " ", sentence).strip()


def read_winobias(ambiguous_type1: bool = True) -> dict[str, list[CorefItem]]:
    """Every line of the eight bundled files, by file name; a line that does not parse raises TaskDataError."""
    folder = resources.files("dso_trl").joinpath("data/winobias")
    items: dict[str, list[CorefItem]] = {}
    for name in FILES:
        items[name] = []
        for line_number, line in enumerate(folder.joinpath(name).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"winobias/{name}:{line_number}"
            try:
                number, sentence, occupations, referent, pronoun = parse_line(line)
            except ValueError as error:  # includes UnknownOccupationError
                raise TaskDataError(f"{where}: {error}: {line!r}") from error
            ambiguous = ambiguous_type1 and "type1" in name
            group = f"{name.split('_', 1)[1]}:{number}"  # pro/anti versions of one sentence share a group
            items[name].append(CorefItem(sentence, occupations, pronoun, None if ambiguous else referent, where,
                                         group))
    return items


def load_winobias(*, seed: int = 0, n_train: int | None = 480, n_train_unambiguous: int | None = 0,
                  n_test: int | None = None, n_test_unambiguous: int | None = None, both_orders: bool = False,
                  dont_know: bool = False, ambiguous_type1: bool = True) -> DatasetDict:
    """WinoBias as a DatasetDict (train = .dev files, test = .test files); sizes count sentences per kind.

    `n_train` defaults to 480 = 12 x 40: the rarest occupation has 12 ambiguous rows in the .dev files, so 480 is
    the largest occupation-balanced training set.
    """
    by_file = read_winobias(ambiguous_type1)
    splits = {}
    for split, part, n_ambiguous, n_unambiguous in (("train", "dev", n_train, n_train_unambiguous),
                                                    ("test", "test", n_test, n_test_unambiguous)):
        items = [item for name, file_items in by_file.items() if name.endswith(part) for item in file_items]
        splits[split] = coreference_split(items, task="winobias", split=split, n_ambiguous=n_ambiguous,
                                          n_unambiguous=n_unambiguous, seed=seed, both_orders=both_orders,
                                          dont_know=dont_know)
    return dataset_dict(splits["train"], splits["test"])
