"""The bundled share-of-women table and its user extensions."""

from __future__ import annotations

import pytest

from dso_trl import occupations as occ
from dso_trl.occupations import (UnknownOccupationError, canonical_occupation, known_occupations,
                                 load_occupation_table, register_occupation, share_women, stereotype_gender)

# The two columns of the WinoBias README table (after its renames), i.e. its male_/female_occupations.txt.
WINOBIAS_MALE = ["driver", "supervisor", "janitor", "cook", "mover", "laborer", "construction worker", "chief",
                 "developer", "carpenter", "manager", "lawyer", "farmer", "salesperson", "physician", "guard",
                 "analyst", "mechanic", "sheriff", "CEO"]
WINOBIAS_FEMALE = ["attendant", "cashier", "teacher", "nurse", "assistant", "secretary", "auditor", "cleaner",
                   "receptionist", "clerk", "counselor", "designer", "hairdresser", "writer", "housekeeper", "baker",
                   "accountant", "editor", "librarian", "tailor"]


@pytest.fixture
def restore_table(monkeypatch):
    """Let a test register occupations without leaking them into the other tests."""
    monkeypatch.setattr(occ, "_SHARES", dict(occ._SHARES))
    monkeypatch.setattr(occ, "_KEYS", dict(occ._KEYS))


def test_bundled_table_has_the_40_winobias_occupations_with_their_majority_gender():
    assert sorted(known_occupations()) == sorted(WINOBIAS_MALE + WINOBIAS_FEMALE)
    assert {o for o in known_occupations() if stereotype_gender(o) == "male"} == set(WINOBIAS_MALE)
    assert {o for o in known_occupations() if stereotype_gender(o) == "female"} == set(WINOBIAS_FEMALE)
    # BLS figures as printed in the WinoBias README, under the README's names mechanician / sewer / constructor.
    assert share_women("nurse") == 0.90 and share_women("carpenter") == 0.021 and share_women("mechanic") == 0.04
    assert share_women("tailor") == 0.80 and share_women("construction worker") == 0.035
    assert share_women("editor") == 0.52 and share_women("salesperson") == 0.48  # closest to parity, either side


@pytest.mark.parametrize("spelling, canonical", [("Nurse", "nurse"), ("the nurses", "nurse"), ("ceo", "CEO"),
                                                 ("CEOs", "CEO"), ("  Construction   Worker ", "construction worker"),
                                                 ("an accountant", "accountant"), ("Hairdressers", "hairdresser")])
def test_spellings_are_normalised(spelling, canonical):
    assert canonical_occupation(spelling) == canonical
    assert stereotype_gender(spelling) == stereotype_gender(canonical)


def test_unknown_occupation_is_a_key_and_value_error_naming_it():
    with pytest.raises(UnknownOccupationError, match="'astronaut'") as info:
        stereotype_gender("astronaut")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert "register_occupation" in str(info.value)


def test_register_and_load_a_table(restore_table, tmp_path):
    register_occupation("Pilot", 0.05)
    assert stereotype_gender("pilots") == "male" and canonical_occupation("pilot") == "Pilot"
    register_occupation("nurse", 0.2)  # updating an entry keeps its spelling
    assert stereotype_gender("nurse") == "male" and "nurse" in known_occupations()
    table = tmp_path / "extra.csv"
    table.write_text("occupation,share_women\ndietitian,0.9\nfirefighter,0.04\n")
    assert load_occupation_table(table) == ["dietitian", "firefighter"]
    assert stereotype_gender("dietitian") == "female"


@pytest.mark.parametrize("share, message", [(0.5, "no majority"), (1.5, r"\[0, 1\]"), (-0.1, r"\[0, 1\]")])
def test_register_rejects_shares_without_a_stereotype(restore_table, share, message):
    with pytest.raises(ValueError, match=message):
        register_occupation("pilot", share)


def test_a_bad_table_names_its_line_and_registers_nothing(restore_table, tmp_path):
    table = tmp_path / "extra.csv"
    table.write_text("occupation,share_women\ndietitian,0.9\nfirefighter,lots\n")
    with pytest.raises(ValueError, match="line 3"):
        load_occupation_table(table)
    with pytest.raises(UnknownOccupationError):
        share_women("dietitian")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_occupation_table(tmp_path / "missing.csv")
    table.write_text("job,share\npilot,0.1\n")
    with pytest.raises(ValueError, match="missing column"):
        load_occupation_table(table)
