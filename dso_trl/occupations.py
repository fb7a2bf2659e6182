"""Share of women per occupation: the source of every "stereotype" label in the tasks, rewards and metrics.

The bundled table (`dso_trl/data/occupations.csv`) holds the 40 WinoBias occupations with the US Bureau of Labor
Statistics figures quoted in the WinoBias README (Labor Force Statistics, cpsaat11), under the names WinoBias uses in
its sentences (mechanician -> mechanic, sewer -> tailor, constructor -> construction worker, counselors -> counselor,
hairdressers -> hairdresser; `source_label` keeps the README's name). The stereotype of an occupation is its majority
gender. Users add occupations (e.g. for SocialCounterfactuals images) with `register_occupation` or
`load_occupation_table`.
"""

from __future__ import annotations

import csv
import os
import re
from importlib import resources
from pathlib import Path
from typing import Literal

from .csv_records import NumberedReader

Gender = Literal["male", "female"]

__all__ = [
    "Gender",
    "UnknownOccupationError",
    "canonical_occupation",
    "known_occupations",
    "load_occupation_table",
    "register_occupation",
    "share_women",
    "stereotype_gender",
]


class UnknownOccupationError(KeyError, ValueError):
    """An occupation with no share-of-women entry (so no stereotype): register it first."""

    def __init__(self, occupation: str):
        super().__init__(occupation)
        self.occupation = occupation

    def __str__(self) -> str:
        return (f"unknown occupation {self.occupation!r}: it has no share-of-women entry; add it with "
                f"dso_trl.occupations.register_occupation({self.occupation!r}, share_women) or load_occupation_table")


_SHARES: dict[str, float] = {}  # canonical name -> share of women in [0, 1]
_KEYS: dict[str, str] = {}  # normalised key -> canonical name


def _key(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip().lower())


def _checked(name: str, share_women: float) -> float:
    if not isinstance(name, str) or not _key(name):
        raise ValueError(f"occupation name must be a non-empty string, got {name!r}")
    share = float(share_women)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share of women for {name!r} must be a fraction in [0, 1], got {share_women!r}")
    if share == 0.5:
        raise ValueError(f"occupation {name!r} has share of women 0.5: no majority gender, so no stereotype")
    return share


def register_occupation(name: str, share_women: float) -> None:
    """Add (or update) an occupation; `share_women` is a fraction in [0, 1] and must have a majority (not 0.5)."""
    share = _checked(name, share_women)
    canonical = _KEYS.get(_key(name), re.sub(r"\s+", " ", name.strip()))
    _SHARES[canonical] = share
    _KEYS[_key(name)] = canonical


def load_occupation_table(path: str | os.PathLike) -> list[str]:
    """Register every row of a CSV with columns `occupation` and `share_women` (fraction); returns the names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"occupation table not found: {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = NumberedReader(handle)
        missing = {"occupation", "share_women"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; need occupation,share_women")
        entries = []
        for row in reader:  # check every row before registering any, so a bad file changes nothing
            try:
                entries.append((row["occupation"], _checked(row["occupation"], row["share_women"])))
            except (TypeError, ValueError) as error:
                raise ValueError(f"{path} {reader.where}: {error}") from error
    for name, share in entries:
        register_occupation(name, share)
    return [name for name, _ in entries]


def canonical_occupation(name: str) -> str:
    """The table's spelling of `name`: case, spacing, a leading article and a plural -s/-es are forgiven."""
    if name in _SHARES:
        return name
    key = re.sub(r"^(the|a|an) ", "", _key(name))
    for candidate in (key, key[:-1] if key.endswith("s") else None, key[:-2] if key.endswith("es") else None):
        if candidate and candidate in _KEYS:
            return _KEYS[candidate]
    raise UnknownOccupationError(name)


def share_women(occupation: str) -> float:
    """Fraction of women in the occupation (BLS for the bundled 40)."""
    return _SHARES[canonical_occupation(occupation)]


def stereotype_gender(occupation: str) -> Gender:
    """The majority gender of the occupation: the 'stereotype' every task and metric refers to."""
    return "female" if share_women(occupation) > 0.5 else "male"


def known_occupations() -> list[str]:
    """Every registered occupation, bundled ones first, in table order."""
    return list(_SHARES)


def _load_bundled() -> None:
    with resources.files("dso_trl").joinpath("data/occupations.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            register_occupation(row["occupation"], float(row["share_women"]))


_load_bundled()
