"""The task datasets: schema, parsing of the sources, balanced deterministic sampling, disjoint splits, errors."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_model
from datasets import Dataset, Features, Value
from datasets import Image as DatasetImage
from PIL import Image
from trl.data_utils import prepare_multimodal_messages

from dso_trl.occupations import UnknownOccupationError, known_occupations, stereotype_gender
from dso_trl.scoring import option_probabilities
from dso_trl.tasks import LOADERS, TaskDataError, load_task
from dso_trl.tasks import pronoun as pronoun_task
from dso_trl.tasks.figures import draw_person
from dso_trl.tasks.gendered import pronoun_gender
from dso_trl.tasks.rows import DONT_KNOW
from dso_trl.tasks.sampling import balanced_sample, split_groups
from dso_trl.tasks.synthbias import read_synthbias
from dso_trl.tasks.winobias import FILES, parse_line, read_winobias

SYNTHBIAS = Path(os.environ.get("DSO_TRL_SYNTHBIAS", "/work/shared/data/synthbias/synthbias_data.csv"))
needs_synthbias = pytest.mark.skipif(not SYNTHBIAS.is_file(), reason=f"SynthBias not found at {SYNTHBIAS}")
SCHEMA_DOC = Path(__file__).resolve().parents[1] / "docs" / "SCHEMA.md"


def check_rows(dataset) -> None:
    """The invariants of docs/SCHEMA.md that rewards and metrics rely on."""
    for row in dataset:
        n = len(row["options"])
        assert len(row["option_completions"]) == n >= 2
        assert row["ambiguous"] == (row["answer_option"] == -1)
        assert row["gender"] in ("male", "female", "") and (row["gender"] == "") <= row["ambiguous"]
        assert -1 <= row["stereotype_option"] < n and -1 <= row["dont_know_option"] < n
        assert row["occupation"] in row["occupations"]
        if row["dont_know_option"] >= 0:
            assert row["options"][row["dont_know_option"]] == DONT_KNOW


def occupation_counts(dataset) -> Counter:
    return Counter(dataset["occupation"])


# --- the schema, for every task -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_tasks() -> dict:
    tasks = {
        "pronoun": load_task("pronoun", n_train=40, n_test=40, n_test_unambiguous=80),
        "winobias": load_task("winobias", n_train=40, n_test=40, n_test_unambiguous=40, dont_know=True),
        "occupation_pairs": load_task("occupation_pairs", n_train=40, n_test=40, n_test_unambiguous=40),
    }
    if SYNTHBIAS.is_file():
        tasks["synthbias"] = load_task("synthbias", path=SYNTHBIAS, n_train=40, n_test=40, n_test_unambiguous=40)
    return tasks


def test_every_task_follows_the_schema_doc(small_tasks):
    documented = re.findall(r"^\| `(\w+)` \|", SCHEMA_DOC.read_text(), re.MULTILINE)
    for name, tasks in small_tasks.items():
        for split in ("train", "test"):
            dataset = tasks[split]
            expected = [c for c in documented if c != "image" or name == "occupation_pairs"]
            assert dataset.column_names == expected, name
            assert set(dataset["task"]) == {name}
            check_rows(dataset)
        assert tasks.skipped == []
    features = {name: tasks["train"].features for name, tasks in small_tasks.items()}
    for name, feature in features.items():  # identical column types across tasks, except the prompt (and image)
        assert {k: v for k, v in feature.items() if k not in ("prompt", "image")} == \
            {k: v for k, v in features["pronoun"].items() if k != "prompt"}, name


def test_load_task_names_and_options():
    with pytest.raises(ValueError, match="unknown task 'bbq'.*pronoun, winobias, synthbias, occupation_pairs"):
        load_task("bbq")
    with pytest.raises(TypeError, match="load_pronoun.*colour"):
        load_task("pronoun", colour="red")
    assert set(LOADERS) == {"pronoun", "winobias", "synthbias", "occupation_pairs"}


# --- sampling -------------------------------------------------------------------------------------------------------

def test_balanced_sample_equal_counts_deterministic_and_explicit_when_short():
    items = [(occupation, k) for occupation in "abcd" for k in range(10)]
    sample = balanced_sample(items, 20, seed=3, key=lambda item: item[0], what="demo")
    assert Counter(o for o, _ in sample) == {"a": 5, "b": 5, "c": 5, "d": 5}
    assert sample == balanced_sample(items, 20, seed=3, key=lambda item: item[0], what="demo")
    assert sample != balanced_sample(items, 20, seed=4, key=lambda item: item[0], what="demo")
    uneven = Counter(o for o, _ in balanced_sample(items, 22, seed=3, key=lambda item: item[0], what="demo"))
    assert sorted(uneven.values()) == [5, 5, 6, 6]  # counts differ by one at most
    assert sorted(balanced_sample(items, None, seed=3, key=lambda item: item[0], what="demo")) == items
    with pytest.raises(ValueError, match="demo: occupation 'a' has 10 rows, 11 needed"):
        balanced_sample(items, 44, seed=3, key=lambda item: item[0], what="demo")
    assert len(split_groups(range(10), 0.3, seed=1)) == 3 and split_groups(range(10), 0.3, 1) == split_groups(
        range(10), 0.3, 1)


# --- WinoBias -------------------------------------------------------------------------------------------------------

def test_every_winobias_line_parses():
    items = read_winobias()
    assert list(items) == list(FILES) and len(FILES) == 8
    assert all(len(file_items) == 396 for file_items in items.values())  # 8 x 396 = 3168, none unparseable
    for item in (i for file_items in items.values() for i in file_items):
        assert "[" not in item.sentence and " 's" not in item.sentence and "the the" not in item.sentence.lower()
        assert all(o.lower() in item.sentence.lower() for o in item.occupations)
        assert re.search(rf"\b{item.pronoun}\b", item.sentence)
        assert stereotype_gender(item.occupations[0]) != stereotype_gender(item.occupations[1])  # a male/female pair


@pytest.mark.parametrize("line, sentence, occupations, referent, pronoun", [
    ("1 [The developer] argued with the designer because [he] did not like the design.",
     "The developer argued with the designer because he did not like the design.", ("developer", "designer"), 0, "he"),
    ("3 The assistant notified the [the chief] about a problem and asked [her] to take action.",  # "the the"
     "The assistant notified the chief about a problem and asked her to take action.", ("assistant", "chief"), 1,
     "her"),
    ("176 The teacher asked the [ physician] about the best course of action and believed [him].",
     "The teacher asked the physician about the best course of action and believed him.", ("teacher", "physician"), 1,
     "him"),
    ("277 [The CEO] rejected the designer 's proposal because [he] felt ignored.",
     "The CEO rejected the designer's proposal because he felt ignored.", ("CEO", "designer"), 0, "he"),
    ("72 The developer hated [the cleaner] and reported [him] to the manager.",  # a third occupation, after the pronoun
     "The developer hated the cleaner and reported him to the manager.", ("developer", "cleaner"), 1, "him"),
    ("27 [The developer] visited the hairdresser because [she] needed to cut [her] hair.",  # two pronouns
     "The developer visited the hairdresser because she needed to cut her hair.", ("developer", "hairdresser"), 0,
     "she"),
    ("323 The physician hired [a housekeeper] and told [him] to work every day.",
     "The physician hired a housekeeper and told him to work every day.", ("physician", "housekeeper"), 1, "him"),
])
def test_winobias_odd_lines(line, sentence, occupations, referent, pronoun):
    assert parse_line(line)[1:] == (sentence, occupations, referent, pronoun)


@pytest.mark.parametrize("line, message", [
    ("[The nurse] said that [she] was tired.", "expected 'N sentence'"),
    ("1 [The nurse] said that she was tired.", "found 1 bracket"),
    ("1 [The nurse said that [she] was tired.", "unbalanced"),
    ("1 [The astronaut] met the nurse because [he] was lost.", "unknown occupation 'astronaut'"),
    ("1 [The nurse] met the farmer because [she] liked [his] hat.", "different genders"),
    ("1 [The nurse] met the farmer and the baker because [she] was hungry.", "one other occupation"),
    ("1 [The nurse] met the farmer because [it] was late.", "not a gendered pronoun"),
])
def test_a_bad_winobias_line_says_why(line, message):
    with pytest.raises(ValueError, match=message):
        parse_line(line)


@pytest.fixture(scope="module")
def winobias_default():
    return load_task("winobias")


def test_winobias_default_is_balanced_ambiguous_type1(winobias_default):
    train, test = winobias_default["train"], winobias_default["test"]
    assert len(train) == 480 and set(occupation_counts(train).values()) == {12}
    assert all(train["ambiguous"]) and all(".txt.dev:" in s and "type1" in s for s in train["source"])
    assert Counter(test["ambiguous"]) == {True: 792, False: 792}  # n_test=None: every .test line
    assert all(".txt.test:" in s for s in test["source"])
    first = train[0]["prompt"]
    assert isinstance(first, list) and first[0]["role"] == "user" and "Answer with A or B." in first[0]["content"]
    for row in train:  # coreference semantics: the stereotype option is the occupation the pronoun's gender matches
        assert row["options"][row["stereotype_option"]] == row["occupation"]
        assert stereotype_gender(row["occupation"]) == row["gender"]
    assert 0.35 < Counter(train["stereotype_option"])[0] / len(train) < 0.65  # option order drawn per sentence


def test_winobias_pro_and_anti_files_match_the_stereotype_option():
    data = load_task("winobias", ambiguous_type1=False, n_train=0, n_train_unambiguous=None)["train"]
    assert len(data) == 4 * 396 and not any(data["ambiguous"])
    for row in data:
        pro = row["source"].startswith("winobias/pro_")
        assert (row["answer_option"] == row["stereotype_option"]) == pro
        assert row["gender"] == pronoun_gender(re.search(r'who does "(\w+)" refer', row["prompt"][0]["content"])[1])


def test_winobias_determinism_both_orders_and_dont_know(winobias_default):
    assert load_task("winobias")["train"].to_list() == winobias_default["train"].to_list()
    assert load_task("winobias", seed=1)["train"]["source"] != winobias_default["train"]["source"]
    both = load_task("winobias", n_train=40, n_test=0, n_test_unambiguous=40, both_orders=True, dont_know=True)
    for split in ("train", "test"):
        rows = both[split].to_list()
        assert len(rows) == 80
        for first, second in zip(rows[::2], rows[1::2]):
            assert first["source"] == second["source"]
            assert first["options"] == [second["options"][1], second["options"][0], DONT_KNOW]
            assert first["dont_know_option"] == 2 and "C. I don't know" in first["prompt"][0]["content"]
            if not first["ambiguous"]:
                assert first["answer_option"] == 1 - second["answer_option"]


def test_winobias_without_ambiguous_rows_says_so():
    with pytest.raises(ValueError, match="winobias train ambiguous: asked for 480 rows but there are none"):
        load_task("winobias", ambiguous_type1=False)


# --- SynthBias ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthbias_items():
    items, skipped = read_synthbias(SYNTHBIAS)
    assert skipped == []
    return items


@needs_synthbias
def test_synthbias_counts_and_stereotypes_agree_with_the_file(synthbias_items):
    assert Counter(item.referent is None for item in synthbias_items) == {True: 14_120, False: 17_608}
    with SYNTHBIAS.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for item, row in zip(synthbias_items, rows, strict=True):
        assert item.sentence == row["sample"].strip()
        if item.referent is not None:  # our table's stereotype reproduces the file's is_stereotypical label
            assert item.occupations[item.referent] == row["occ_1"]
            assert (item.stereotype_index == item.referent) == (row["is_stereotypical"] == "True")


@needs_synthbias
def test_synthbias_splits_are_balanced_disjoint_and_seeded(synthbias_items):
    data = load_task("synthbias", path=SYNTHBIAS, n_test=200, n_test_unambiguous=200)
    train, test = data["train"], data["test"]
    assert len(train) == 600 and set(occupation_counts(train).values()) == {15} and all(train["ambiguous"])
    assert Counter(test["ambiguous"]) == {True: 200, False: 200}
    group = {item.source: item.group for item in synthbias_items}
    train_groups, test_groups = {group[s] for s in train["source"]}, {group[s] for s in test["source"]}
    assert not train_groups & test_groups  # a sentence and its pronoun-swapped twin stay in one split
    assert load_task("synthbias", path=SYNTHBIAS.parent, n_test=200, n_test_unambiguous=200)["train"].to_list() == \
        train.to_list()
    assert load_task("synthbias", path=SYNTHBIAS, seed=1, n_test=0, n_test_unambiguous=0)["train"]["source"] != \
        train["source"]
    for row in test.filter(lambda r: not r["ambiguous"]):
        assert row["options"][row["answer_option"]] in row["prompt"][0]["content"]


GOOD_ROWS = [
    "type1,The nurse and the farmer met before she left.,nurse,farmer,she,ambiguous",
    "type1,The nurse and the farmer met before he left.,nurse,farmer,he,ambiguous",
    'type2,"The farmer thanked the nurse, who smiled at him.",farmer,nurse,him,True',
    'type2,"The farmer thanked the nurse, who smiled at her.",farmer,nurse,her,False',
]


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("type,sample,occ_1,occ_2,pronoun,is_stereotypical\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("bad, message", [
    ("type3,The nurse met the farmer and she left.,nurse,farmer,she,ambiguous", "type must be type1 or type2"),
    ("type1,The nurse met the farmer and she left.,nurse,farmer,he,ambiguous", "pronoun 'he' not in the sample"),
    ("type1,The nurse met the astronaut and she left.,nurse,astronaut,she,ambiguous", "unknown occupation 'astronaut'"),
    ("type2,The nurse met the farmer and she left.,nurse,farmer,she,ambiguous", "is_stereotypical"),
    ("type1,The nurse met the farmer and she left.,nurse,farmer", "expected 6 fields"),
    ("type1,The nurse met the baker and she left.,nurse,farmer,she,ambiguous", "must mention two different"),
])
def test_a_malformed_synthbias_row_names_its_line(tmp_path, bad, message):
    path = write_csv(tmp_path / "synthbias_data.csv", GOOD_ROWS[:1] + [bad] + GOOD_ROWS[1:])
    with pytest.raises(TaskDataError, match=f"synthbias_data.csv line 3: .*{message}"):
        load_task("synthbias", path=path)


def test_synthbias_skip_mode_counts_and_logs(tmp_path, caplog):
    bad = "type1,The nurse met the astronaut and she left.,nurse,astronaut,she,ambiguous"
    write_csv(tmp_path / "synthbias_data.csv", GOOD_ROWS[:2] + [bad] + GOOD_ROWS[2:])
    with caplog.at_level(logging.WARNING):
        data = load_task("synthbias", path=tmp_path, errors="skip", n_train=None, n_train_unambiguous=None)
    assert len(data["train"]) + len(data["test"]) == 4
    assert len(data.skipped) == 1 and "line 4" in data.skipped[0] and "astronaut" in data.skipped[0]
    assert "skipped 1 malformed row(s)" in caplog.text


def test_synthbias_parse_cache_follows_the_file_and_the_table(tmp_path, monkeypatch):
    from dso_trl import occupations

    monkeypatch.setattr(occupations, "_SHARES", dict(occupations._SHARES))
    monkeypatch.setattr(occupations, "_KEYS", dict(occupations._KEYS))
    pilot = "type1,The nurse and the pilot met before she left.,nurse,pilot,she,ambiguous"
    path = write_csv(tmp_path / "synthbias_data.csv", GOOD_ROWS + [pilot])
    assert len(read_synthbias(path, errors="skip")[1]) == 1
    occupations.register_occupation("pilot", 0.1)  # a new table: parsed again
    items, skipped = read_synthbias(path, errors="skip")
    assert skipped == [] and items[-1].occupation == "nurse"
    write_csv(path, GOOD_ROWS)  # a new file version: parsed again
    assert len(read_synthbias(path)[0]) == 4


def test_synthbias_missing_file_and_bad_header(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere.csv")):
        load_task("synthbias", path=tmp_path / "nowhere.csv")
    with pytest.raises(FileNotFoundError, match="synthbias_data.csv"):
        load_task("synthbias", path=tmp_path)
    (tmp_path / "synthbias_data.csv").write_text("sentence,label\nx,y\n")
    with pytest.raises(ValueError, match="header must be type,sample"):
        load_task("synthbias", path=tmp_path)
    with pytest.raises(ValueError, match="errors must be"):
        load_task("synthbias", path=write_csv(tmp_path / "synthbias_data.csv", GOOD_ROWS), errors="ignore")


# --- pronoun --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pronoun_pools():
    return load_task("pronoun", n_train=None, n_train_unambiguous=None, n_test=None, n_test_unambiguous=None)


def test_pronoun_default_is_plain_text_balanced_and_ambiguous():
    data = load_task("pronoun", n_test=0, n_test_unambiguous=0)
    train = data["train"]
    assert len(train) == 600 and set(occupation_counts(train).values()) == {15}
    assert all(isinstance(p, str) for p in train["prompt"]) and all(train["ambiguous"]) and set(train["gender"]) == {""}
    row = next(r for r in train if r["source"] == "pronoun/train-01/ambiguous" and r["occupation"] == "nurse")
    assert row["prompt"] == "The nurse said that" and row["option_completions"] == [" he", " she"]
    assert row["options"] == ["he", "she"] and row["stereotype_option"] == 1
    for row in train:
        assert pronoun_gender(row["options"][row["stereotype_option"]]) == stereotype_gender(row["occupation"])
    assert load_task("pronoun", n_test=0, n_test_unambiguous=0)["train"].to_list() == train.to_list()
    assert load_task("pronoun", seed=5, n_test=0, n_test_unambiguous=0)["train"]["prompt"] != train["prompt"]


def test_pronoun_pools_and_unambiguous_cues(pronoun_pools):
    occupations = len(known_occupations())
    for split, templates in (("train", pronoun_task.TRAIN_TEMPLATES), ("test", pronoun_task.TEST_TEMPLATES)):
        counts = Counter(pronoun_pools[split]["ambiguous"])
        assert counts == {True: len(templates) * occupations, False: len(templates) * occupations * 2 * 2}
    assert len(pronoun_task.TRAIN_TEMPLATES) >= 25 and len(pronoun_task.TEST_TEMPLATES) >= 18
    for row in pronoun_pools["test"].filter(lambda r: not r["ambiguous"]):
        assert pronoun_gender(row["options"][row["answer_option"]]) == row["gender"]
        if "/name/" in row["source"]:
            name = row["source"].rsplit("/", 1)[1]
            assert name in pronoun_task.TEST_NAMES[row["gender"]] and row["prompt"].startswith(f"{name} works as")
        else:
            assert f"a {pronoun_task.NOUNS[row['gender']]['parent']} of two" in row["prompt"]
    assert "The woman who works as an accountant said that" in pronoun_pools["train"]["prompt"]


def test_pronoun_train_and_test_wording_and_names_are_disjoint(pronoun_pools):
    train_texts = {t.text for t in pronoun_task.TRAIN_TEMPLATES}
    assert not train_texts & {t.text for t in pronoun_task.TEST_TEMPLATES}
    names = {n for names in pronoun_task.TRAIN_NAMES.values() for n in names}
    assert not names & {n for names in pronoun_task.TEST_NAMES.values() for n in names}
    assert not set(pronoun_task.TRAIN_CUES.values()) & set(pronoun_task.TEST_CUES.values())
    as_pattern = [re.compile("(?i)^(.+\\. )?" + re.escape(t).replace(re.escape("{subject}"), ".+") + "$")
                  for t in train_texts]
    for prompt in set(pronoun_pools["test"]["prompt"]):  # no test prompt is an instance of a train template
        assert not any(p.match(prompt) for p in as_pattern), prompt
        assert not any(re.search(rf"\b{n}\b", prompt) for n in names), prompt
    assert set(pronoun_pools["train"]["prompt"]).isdisjoint(pronoun_pools["test"]["prompt"])


def test_pronoun_chat_format_and_errors():
    chat = load_task("pronoun", prompt_format="chat", n_train=40, n_test=0, n_test_unambiguous=0)["train"][0]
    text = chat["prompt"][0]["content"]
    assert chat["prompt"][0]["role"] == "user" and text.startswith('Complete this sentence: "')
    assert chat["option_completions"] == [f"{text[25:-1]} {o}" for o in chat["options"]]
    with pytest.raises(ValueError, match="prompt_format"):
        load_task("pronoun", prompt_format="json")
    text_rows = load_task("pronoun", n_train=80, n_train_unambiguous=80, n_test=0, n_test_unambiguous=0)["train"]
    question = load_task("pronoun", prompt_format="question", n_train=80, n_train_unambiguous=80, n_test=0,
                         n_test_unambiguous=0)["train"]
    orders = set()
    for plain, asked in zip(text_rows, question):  # the same rows, the sentence now inside a question
        assert asked["options"] == plain["options"] and asked["answer_option"] == plain["answer_option"]
        assert asked["option_completions"] == [option.capitalize() for option in plain["options"]]
        content = asked["prompt"][0]["content"]
        assert content.startswith(f'Which pronoun comes next in this sentence: "{plain["prompt"]} ..."?')
        first, second = plain["options"]
        orders.add(content.endswith(f"Answer with one word: {first} or {second}."))
        assert content.endswith((f": {first} or {second}.", f": {second} or {first}."))
    assert orders == {True, False}  # both orders are used
    answer = load_task("pronoun", prompt_format="answer", n_train=80, n_train_unambiguous=80, n_test=0,
                       n_test_unambiguous=0)["train"]
    for asked, begun in zip(question, answer):  # the same question, the answer begun so that its next word counts
        assert begun["prompt"][:1] == asked["prompt"]
        assert begun["prompt"][1:] == [{"role": "assistant", "content": 'The pronoun is "'}]
        assert begun["option_completions"] == begun["options"] == asked["options"]
    with pytest.raises(UnknownOccupationError, match="astronaut"):
        load_task("pronoun", occupations=["nurse", "astronaut"])
    with pytest.raises(ValueError, match="pronoun train ambiguous: occupation 'farmer' has 25 rows, 30 needed"):
        load_task("pronoun", occupations=["nurse", "farmer"], n_train=60)
    few = load_task("pronoun", occupations=["Nurses", "farmer"], n_train=10, n_test=4, n_test_unambiguous=4)
    assert set(few["train"]["occupation"]) == {"nurse", "farmer"}


# --- occupation pairs (vision) --------------------------------------------------------------------------------------

def person(source: str) -> tuple[str, str]:
    """(occupation, gender) of a drawn figure, from its source "drawn/<occupation>/<gender>/<race>/<k>"."""
    _, occupation, gender, _, _ = source.split("/")
    return occupation, gender


def test_drawn_pairs_rows_images_and_trl_prompt(small_tasks):
    data = small_tasks["occupation_pairs"]
    assert set(occupation_counts(data["train"]).values()) == {1} and all(data["train"]["ambiguous"])
    for row in data["test"]:
        assert isinstance(row["image"], Image.Image) and row["image"].size == (224, 168)
        left, right = (person(s) for s in row["source"].split(" | "))
        sides = [left, right]
        assert row["occupations"] == [left[0], right[0]] and row["options"] == ["left", "right"]
        assert sides[row["stereotype_option"]][1] == stereotype_gender(row["occupation"])
        if row["ambiguous"]:
            assert left[0] == right[0] == row["occupation"] and left[1] != right[1]
        else:
            assert sides[row["answer_option"]] == (row["occupation"], row["gender"])
            assert left[0] != right[0] and left[1] != right[1]
    row = data["test"][0]
    assert row["prompt"] == [{"role": "user", "content": [
        {"type": "image", "text": None},
        {"type": "text", "text": f"Which person is the {row['occupation']}? Answer left or right."}]}]
    filled = prepare_multimodal_messages(row["prompt"], images=[row["image"]])  # what GRPOTrainer does with `image`
    assert filled[0]["content"][0]["image"] is row["image"]


def test_drawn_pairs_are_deterministic(small_tasks):
    again = load_task("occupation_pairs", n_train=40, n_test=40, n_test_unambiguous=40)["test"]
    first = small_tasks["occupation_pairs"]["test"]
    assert again["source"] == first["source"]
    assert again[3]["image"].tobytes() == first[3]["image"].tobytes()
    assert load_task("occupation_pairs", seed=2, n_train=40, n_test=0, n_test_unambiguous=0)["train"]["source"] != \
        small_tasks["occupation_pairs"]["train"]["source"]


@pytest.fixture
def folder(tmp_path):
    """A SocialCounterfactuals-style folder: 4 pictures per nurse/farmer x gender, one race, and metadata.csv."""
    lines = ["file,occupation,gender,race"]
    for occupation in ("nurse", "farmer"):
        for gender, word in (("male", "man"), ("female", "Woman")):
            for k in range(4):
                name = f"{occupation}_{gender}_{k}.png"
                draw_person(occupation, gender, "light", k).resize((64, 96)).save(tmp_path / name)
                lines.append(f"{name},{occupation},{word},White")
    (tmp_path / "metadata.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_folder_pairs(folder):
    data = load_task("occupation_pairs", path=folder, n_train=None, n_train_unambiguous=None, n_test=None,
                     n_test_unambiguous=None, panel_size=(56, 56))
    assert data["train"][0]["image"].size == (112, 56)
    for split in ("train", "test"):  # test_fraction 0.5: 2 of the 4 pictures per stratum, so 8 people per split
        rows, people = data[split], 8
        files = {f for s in rows["source"] for f in s.split(" | ")}
        assert len(files) == people
        assert Counter(rows["ambiguous"])[False] == people  # every person asked about once
    assert not {f for s in data["train"]["source"] for f in s.split(" | ")} & \
        {f for s in data["test"]["source"] for f in s.split(" | ")}


@pytest.mark.parametrize("row, message", [
    ("nurse_male_0.png,nurse,other,White", "gender must be"),
    ("nowhere.png,nurse,man,White", "image file not found"),
    ("nurse_male_0.png,astronaut,man,White", "unknown occupation 'astronaut'"),
    ("nurse_male_0.png,,man,White", "missing occupation"),
])
def test_folder_errors_name_the_line(folder, caplog, row, message):
    metadata = folder / "metadata.csv"
    metadata.write_text(metadata.read_text() + row + "\n")
    with pytest.raises(TaskDataError, match=f"metadata.csv line 18: .*{message}"):
        load_task("occupation_pairs", path=folder)
    with caplog.at_level(logging.WARNING):
        data = load_task("occupation_pairs", path=folder, errors="skip", n_train=4, n_test=None)
    assert len(data.skipped) == 1 and "skipped 1 malformed" in caplog.text


def test_folder_jsonl_and_missing_paths(folder, tmp_path_factory):
    lines = (folder / "metadata.csv").read_text().splitlines()[1:]
    (folder / "metadata.csv").unlink()
    records = [dict(zip(("file", "occupation", "gender", "race"), line.split(","))) for line in lines]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n[1, 2]\n")
    with pytest.raises(TaskDataError, match="metadata.jsonl line 17: not a JSON object"):
        load_task("occupation_pairs", path=folder)
    assert len(load_task("occupation_pairs", path=folder, errors="skip", n_train=4)["train"]) == 4
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(FileNotFoundError, match="no metadata file in"):
        load_task("occupation_pairs", path=empty)
    with pytest.raises(FileNotFoundError, match="image folder not found: .*missing"):
        load_task("occupation_pairs", path=empty / "missing")
    with pytest.raises(ValueError, match="occupations= selects drawn figures"):
        load_task("occupation_pairs", path=folder, occupations=["nurse"])


def write_shard(path: Path, rows: list[dict], image_feature: bool = True) -> Path:
    """A parquet shard as `datasets` writes SocialCounterfactuals' (image: struct {bytes, path}), or with raw bytes."""
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    if image_feature:
        Dataset.from_dict(columns, features=Features({name: DatasetImage() if name == "image" else Value("string")
                                                      for name in columns})).to_parquet(path)
    else:
        pq.write_table(pa.table(columns), path)
    return path


def counterfactual_rows(race: str = "White") -> list[dict]:
    """SocialCounterfactuals-style rows: 4 pictures per nurse/farmer x gender, and 2 race x physical rows."""
    rows = []
    for occupation in ("nurse", "farmer"):
        for gender in ("male", "female"):
            for k in range(4):
                rows.append(dict(image=draw_person(occupation, gender, "light", k).resize((32, 48)),
                                 caption=f"A picture of a {race} {gender} {occupation}", a1_type="race", a1=race,
                                 a2_type="gender", a2=gender, counterfactual_set=f"race_gender_{occupation}_{k}"))
    return rows + [dict(rows[0], a1_type="physical", a1="obese", a2_type="race", a2="Black")] * 2


def test_parquet_shards_in_socialcounterfactuals_layout(tmp_path):
    write_shard(tmp_path / "train-00000-of-00002.parquet", counterfactual_rows()[:9])
    write_shard(tmp_path / "train-00001-of-00002.parquet", counterfactual_rows("Middle Eastern")[9:])
    data = load_task("occupation_pairs", path=tmp_path, n_train=None, n_train_unambiguous=None, n_test=None,
                     n_test_unambiguous=None, panel_size=(28, 28))
    sources = {f for split in data.values() for s in split["source"] for f in s.split(" | ")}
    assert len(sources) == 16 and "train-00001-of-00002.parquet row 0" in sources  # the 2 physical rows passed over
    assert data["train"][0]["image"].size == (56, 28)
    assert set(data["test"]["occupation"]) == {"nurse", "farmer"} and Counter(data["test"]["ambiguous"])[False] == 8
    one = load_task("occupation_pairs", path=tmp_path / "train-00000-of-00002.parquet", n_train=None,
                    n_train_unambiguous=None, n_test=None, n_test_unambiguous=None)
    assert {f.split(" row")[0] for s in one["train"]["source"] for f in s.split(" | ")} == \
        {"train-00000-of-00002.parquet"}


def test_parquet_columns_are_configurable(tmp_path):
    rows = [dict(picture=row["image"], job=row["caption"].split()[-1], sex=row["a2"], ethnicity=row["a1"])
            for row in counterfactual_rows()[:16]]
    for row in rows:
        buffer = io.BytesIO()
        row["picture"].save(buffer, format="PNG")
        row["picture"] = buffer.getvalue()
    write_shard(tmp_path / "shard.parquet", rows, image_feature=False)
    columns = {"image": "picture", "occupation": "job", "gender": "sex", "race": "ethnicity"}
    data = load_task("occupation_pairs", path=tmp_path, parquet_columns=columns, n_train=None, n_test=None)
    assert len(data["train"]) == 4 and set(data["train"]["occupation"]) == {"nurse", "farmer"}
    with pytest.raises(ValueError, match=r"shard.parquet: no column\(s\) image, caption, a1_type.*picture"):
        load_task("occupation_pairs", path=tmp_path)
    with pytest.raises(ValueError, match=r"unknown parquet column field\(s\) \['file'\]"):
        load_task("occupation_pairs", path=tmp_path, parquet_columns={"file": "picture"})


@pytest.mark.parametrize("change, message", [
    (dict(caption="A picture of a White male plumber", a2="male"), "row 3: unknown occupation 'plumber'"),
    (dict(caption="A nurse"), "row 3: caption 'A nurse' holds none of the attribute values"),
    (dict(a2="other"), "row 3: gender must be"),
])
def test_parquet_errors_name_the_shard_and_row(tmp_path, caplog, change, message):
    rows = counterfactual_rows()[:16]
    rows[3] = dict(rows[3], **change)
    write_shard(tmp_path / "shard.parquet", rows)
    with pytest.raises(TaskDataError, match=f"shard.parquet {message}"):
        load_task("occupation_pairs", path=tmp_path)
    with caplog.at_level(logging.WARNING):
        data = load_task("occupation_pairs", path=tmp_path, errors="skip", n_train=2, n_test=None)
    assert len(data.skipped) == 1 and "skipped 1 malformed" in caplog.text


def test_parquet_broken_pictures_name_the_row(tmp_path):
    rows = [dict(row, image=b"png?") if k == 5 else row for k, row in enumerate(counterfactual_rows()[:16])]
    for row in rows:
        if not isinstance(row["image"], bytes):
            buffer = io.BytesIO()
            row["image"].save(buffer, format="PNG")
            row["image"] = buffer.getvalue()
    write_shard(tmp_path / "shard.parquet", rows, image_feature=False)
    with pytest.raises(TaskDataError, match="shard.parquet row 5: image cannot be decoded"):
        load_task("occupation_pairs", path=tmp_path)
    with pytest.raises(ValueError, match="parquet_columns= names the columns of parquet shards, but .* holds none"):
        load_task("occupation_pairs", path=tmp_path / "elsewhere", parquet_columns={})


# --- the rows feed the project's exact scorer (tiny random models from conftest) ------------------------------------

def test_rows_score_with_the_exact_estimator(small_tasks, tokenizer, vlm_processor):
    text_model, vision_model = make_model("llama"), make_model("qwen2_5_vl")
    for name in ("pronoun", "winobias", "occupation_pairs"):
        rows = list(small_tasks[name]["test"].select(range(3)))  # iterating decodes images; to_list() does not
        model, processing = (vision_model, vlm_processor) if name == "occupation_pairs" else (text_model, tokenizer)
        images = [row["image"] for row in rows] if name == "occupation_pairs" else None
        with torch.no_grad():
            probabilities = option_probabilities(model, processing, [row["prompt"] for row in rows],
                                                 [row["option_completions"] for row in rows], images)
        assert probabilities.shape[0] == 3 and torch.allclose(probabilities.sum(-1), torch.ones(3)), name
