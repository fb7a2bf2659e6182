"""Extract the real MMLU questions (with gold answers) that the `lm_eval` wheel ships in its chain-of-thought prompt file
into `dso_trl/data/mmlu_questions.jsonl`, the knowledge questions of the capability suite.

Source: `lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json` of EleutherAI's lm-evaluation-harness (MIT licence):
about 5 questions per MMLU subject (57 subjects) with their options and "The answer is (X)". MMLU itself: Hendrycks et al.,
"Measuring Massive Multitask Language Understanding" (ICLR 2021), MIT licence. Only the question, options, answer and
subject are kept (the chain-of-thought explanations are dropped).

    python scripts/extract_mmlu_questions.py                        # from an installed lm_eval
    python scripts/extract_mmlu_questions.py --wheel lm_eval-0.4.13-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from importlib import resources
from pathlib import Path

PROMPTS = "lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
OUTPUT = Path(__file__).resolve().parent.parent / "dso_trl" / "data" / "mmlu_questions.jsonl"
QUESTION = re.compile(r"Q: (?P<question>.*?)\n(?P<options>\(A\) .*?)\nA: .*?The answer is \((?P<answer>[A-J])\)", re.S)
OPTION = re.compile(r"(?:^|\s)\(([A-J])\) ")
LETTERS = "ABCDEFGHIJ"


def read_prompts(wheel: str | None) -> dict[str, str]:
    if wheel:
        with zipfile.ZipFile(wheel) as archive:
            return json.loads(archive.read(PROMPTS))
    return json.loads(resources.files("lm_eval").joinpath(PROMPTS.removeprefix("lm_eval/")).read_text())


def questions(prompts: dict[str, str]) -> list[dict]:
    rows = []
    for subject, text in sorted(prompts.items()):
        found = list(QUESTION.finditer(text))
        if not found:
            raise SystemExit(f"{subject}: no question parsed; has the prompt file's format changed?")
        for match in found:
            parts = OPTION.split(match["options"])[1:]  # letter, text, letter, text, ...
            letters, texts = parts[0::2], [" ".join(t.split()) for t in parts[1::2]]
            if letters != list(LETTERS[:len(letters)]) or match["answer"] not in letters:
                raise SystemExit(f"{subject}: malformed options {match['options']!r}")
            rows.append({"subject": subject, "question": match["question"].strip(), "options": texts,
                         "answer": letters.index(match["answer"])})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", help="an lm_eval wheel to read instead of the installed package")
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args()
    rows = questions(read_prompts(args.wheel))
    Path(args.output).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    print(f"{len(rows)} questions from {len({r['subject'] for r in rows})} subjects -> {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
