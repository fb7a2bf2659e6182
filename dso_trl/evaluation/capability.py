"""What else did the steering change? Capability outside the task, measured against the same model with the steering
off: KL and perplexity on general prose, answers to real MMLU questions, and greedy chat answers a person can read.

Data (all offline, none written in this project):
- general prose: the paragraphs of Python's own documentation topics (`pydoc_data.topics`, PSF licence, ships with
  every CPython), split by topic into a training part (`general_texts("train")`, for `DSOConfig.text_kl_coef`) and a
  disjoint evaluation part (`general_texts("eval")`, the headline figures);
- knowledge questions: the 282 MMLU questions with gold answers that EleutherAI's lm-evaluation-harness ships in its
  chain-of-thought prompt file (MIT; `scripts/extract_mmlu_questions.py`, `dso_trl/data/SOURCES.md`), used only for
  evaluation, scored zero-shot by the answer letter as lm-evaluation-harness's `mmlu` task does;
- chat prompts: ordinary requests written for this check (`CHAT_PROMPTS`), answered greedily.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Sequence

import torch

from ..devices import device_of
from ..scoring import encode_prompts, inference, option_probabilities, tokenizer_of
from ..steering import Steering
from .divergence import compare_on_text, probability_kl

LETTERS = "ABCDEFGHIJ"
CHAT_PROMPTS = (
    "Tell me about your favourite doctor.",
    "What should I pack for a weekend trip to the mountains?",
    "Explain how a rainbow forms, in two sentences.",
    "Write a short thank-you note to a neighbour who watered my plants.",
    "What are three tips for a job interview?",
    "Describe a typical day of a nurse.",
    "How do I make a cup of tea?",
    "Why is the sky blue?",
)


def general_texts(split: str = "eval", *, min_chars: int = 600) -> list[str]:
    """Prose passages of Python's documentation topics (`pydoc_data.topics`): the unindented paragraphs (code, grammar
    and headings dropped), each distinct paragraph once, merged in order into passages of at least `min_chars`
    characters. A paragraph goes to "train" or "eval" by a hash of its text (one in four to "eval"), so the splits
    never share a paragraph, even one that several topics repeat."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    from pydoc_data.topics import topics

    passages, seen = [], set()
    for name in sorted(topics):
        current = ""
        for paragraph in _prose_paragraphs(topics[name]):
            if paragraph in seen or _paragraph_split(paragraph) != split:
                continue
            seen.add(paragraph)
            current = f"{current} {paragraph}".strip()
            if len(current) >= min_chars:
                passages.append(current)
                current = ""
        if len(current) >= min_chars // 3:
            passages.append(current)
    return passages


def neutral_texts() -> list[str]:
    """40 short neutral sentences written for this project (no people, occupations or pronouns): a quick, fixed input
    for exactness checks (e.g. of an export). Not a capability figure: those use `general_texts("eval")`."""
    text = resources.files("dso_trl").joinpath("data/neutral_texts.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _paragraph_split(paragraph: str) -> str:
    return "eval" if int(hashlib.sha256(paragraph.encode()).hexdigest(), 16) % 4 == 0 else "train"


def _prose_paragraphs(text: str):
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if any(line.startswith((" ", "\t")) or re.fullmatch(r"[*=\-^~]+", line.strip()) for line in lines):
            continue  # code, grammar and headings
        paragraph = " ".join(line.strip() for line in lines).strip()
        if len(paragraph) >= 80 and paragraph[-1] in ".:;)":
            yield paragraph


def as_chat_exchange(passage: str) -> list[dict[str, str]]:
    """A passage as a chat exchange: its first sentence as the user's turn, the rest as the assistant's answer."""
    cut = passage.find(". ", 40, 300)
    cut = cut + 1 if cut > 0 else min(len(passage) // 2, 200)
    return [{"role": "user", "content": passage[:cut].strip()}, {"role": "assistant", "content": passage[cut:].strip()}]


def as_multiple_choice(passage: str, seed: int) -> list[dict[str, str]]:
    """A passage as a fill-in-the-blank question in the shape of a multiple-choice benchmark (options A-D, "Answer with
    the letter"), as a user turn: the blanked word and three other words of the passage are the options. No answer is
    given: the text-KL term holds the model's letter distribution after such a question to the base model's."""
    import random

    rng = random.Random(seed)
    sentences = [s for s in re.split(r"(?<=[.;:])\s+", passage) if len(s.split()) >= 6] or [passage]
    sentence = rng.choice(sentences)
    words = [w for w in dict.fromkeys(re.findall(r"[A-Za-z]{4,}", passage))]
    candidates = [w for w in dict.fromkeys(re.findall(r"[A-Za-z]{4,}", sentence))]
    if len(words) < 4 or not candidates:
        return [{"role": "user", "content": passage}]
    blank = rng.choice(candidates)
    options = [blank] + rng.sample([w for w in words if w != blank], 3)
    rng.shuffle(options)
    text = re.sub(rf"\b{re.escape(blank)}\b", "_____", sentence, count=1)
    listed = "".join(f"\n{LETTERS[i]}. {option}" for i, option in enumerate(options))
    return [{"role": "user", "content": f"Which word fills the blank?\n{text}{listed}\n"
             "Answer with the letter of the correct option."}]


def read_texts(path: str) -> list[str]:
    """Passages of a UTF-8 text file, separated by blank lines (your own prose for the capability figures)."""
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as error:
        raise ValueError(f"cannot read the text file {path}: {error.strerror or error}") from error
    passages = [" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip()]
    if not passages:
        raise ValueError(f"{path} holds no text (passages are separated by blank lines)")
    return passages


def mmlu_questions() -> list[dict[str, Any]]:
    """The bundled MMLU questions: `subject`, `question`, `options` (texts), `answer` (index)."""
    text = resources.files("dso_trl").joinpath("data/mmlu_questions.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def mmlu_prompt(question: dict[str, Any], chat: bool = True) -> str | list[dict[str, str]]:
    """A zero-shot MMLU prompt whose answer is the next token, the option's letter. `chat`: a user turn asking for the
    letter (answered "A", "B", ... after the chat template's generation prompt), how an instruct model is used;
    otherwise lm-evaluation-harness's plain `mmlu` prompt ending in "Answer:" (answered " A", " B", ...)."""
    options = "".join(f"\n{LETTERS[i]}. {text}" for i, text in enumerate(question["options"]))
    if chat:
        return [{"role": "user", "content": f"{question['question'].strip()}{options}\n"
                 "Answer with the letter of the correct option."}]
    subject = question["subject"].replace("_", " ")
    return (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
            f"{question['question'].strip()}{options}\nAnswer:")


@dataclass(frozen=True)
class CapabilityMetrics:
    """What the steering changed outside the task at one λ (percentages in points, KL in nats)."""

    text_kl: float
    perplexity_ratio: float
    mmlu_accuracy: float
    mmlu_agreement: float
    mmlu_kl: float
    base_perplexity: float
    base_mmlu_accuracy: float
    n_text_tokens: int
    n_questions: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CapabilityMetrics:
        return cls(**values)


class CapabilitySuite:
    """The capability figures of a steering at its current λ, against the same model with the steering off.

    Defaults keep a sweep point under a minute on a 2-core CPU for a 135M model: 32 held-out prose passages of at most
    128 tokens, and the 128 MMLU questions with the shortest prompts. MMLU prompts are chat turns when the tokenizer has
    a chat template: an instruct model asked in plain text answers "A" to nearly everything (SmolLM2: 254 of 258), so
    agreement with the base model would not move whatever the steering did. The base model's MMLU answers are computed
    once and reused at every λ of a sweep."""

    def __init__(self, processing_class: Any, *, texts: Sequence[str] | None = None,
                 questions: Sequence[dict[str, Any]] | None = None, max_texts: int = 32, max_questions: int = 128,
                 max_length: int = 128, batch_size: int = 8):
        self.processing_class = processing_class
        self.texts = list(texts) if texts is not None else general_texts("eval")[:max_texts]
        chat = getattr(tokenizer_of(processing_class), "chat_template", None) is not None
        # shortest prompts first: a batch pads to its longest prompt and keeps logits from its shortest one on
        questions = list(questions) if questions is not None else mmlu_questions()
        self.questions = sorted(questions, key=lambda q: len(str(mmlu_prompt(q))))[:max_questions]
        if not self.texts or not self.questions:
            raise ValueError("the capability suite needs at least one text and one question")
        self.max_length, self.batch_size = max_length, batch_size
        self._prompts = [mmlu_prompt(q, chat) for q in self.questions]
        self._letters = [[f"{'' if chat else ' '}{LETTERS[i]}" for i in range(len(q["options"]))]
                         for q in self.questions]
        self._answers = torch.tensor([q["answer"] for q in self.questions])
        self._base: torch.Tensor | None = None

    def _mmlu_probabilities(self, model: torch.nn.Module) -> torch.Tensor:
        with inference(model):
            return option_probabilities(model, self.processing_class, self._prompts, self._letters,
                                        batch_size=self.batch_size).cpu()

    def measure(self, steering: Steering) -> CapabilityMetrics:
        text = compare_on_text(steering, self.processing_class, self.texts, batch_size=self.batch_size,
                               max_length=self.max_length)
        if self._base is None:
            with steering.disabled():
                self._base = self._mmlu_probabilities(steering.model)
        steered = self._mmlu_probabilities(steering.model)
        base = self._base
        choice, base_choice = steered.argmax(-1), base.argmax(-1)
        return CapabilityMetrics(
            text_kl=text.kl, perplexity_ratio=text.perplexity_ratio,
            mmlu_accuracy=100 * float((choice == self._answers).float().mean()),
            mmlu_agreement=100 * float((choice == base_choice).float().mean()),
            mmlu_kl=float(probability_kl(steered, base).mean()), base_perplexity=math.exp(text.base_nll),
            base_mmlu_accuracy=100 * float((base_choice == self._answers).float().mean()),
            n_text_tokens=text.tokens, n_questions=len(self.questions))


def greedy_answers(model: torch.nn.Module, processing_class: Any, prompts: Sequence[str] = CHAT_PROMPTS, *,
                   max_new_tokens: int = 48) -> list[str]:
    """Greedy answers to chat prompts (through the chat template; a model without one continues the plain prompt),
    one at a time so no padding changes them."""
    tokenizer = tokenizer_of(processing_class)
    chat = getattr(tokenizer, "chat_template", None) is not None
    device = device_of(model)
    answers = []
    with inference(model):
        for prompt in prompts:
            encoded = encode_prompts(processing_class, [[{"role": "user", "content": prompt}] if chat else prompt])[0]
            ids = torch.tensor([encoded.input_ids], device=device)
            output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            answers.append(tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return answers


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Share of a text's word n-grams that already occurred earlier in it: 0 for fluent prose, high for loops."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def side_by_side(steering: Steering, processing_class: Any, prompts: Sequence[str] = CHAT_PROMPTS, *,
                 max_new_tokens: int = 48) -> list[dict[str, Any]]:
    """Base and steered (current λ) greedy answers to the same chat prompts, with their repetition figure."""
    steered = greedy_answers(steering.model, processing_class, prompts, max_new_tokens=max_new_tokens)
    with steering.disabled():
        base = greedy_answers(steering.model, processing_class, prompts, max_new_tokens=max_new_tokens)
    return [{"prompt": p, "base": b, "steered": s, "base_repetition": repeated_ngram_fraction(b),
             "steered_repetition": repeated_ngram_fraction(s), "strength": steering.strength}
            for p, b, s in zip(prompts, base, steered)]


def generations_markdown(generations: Sequence[dict[str, Any]]) -> str:
    """The side-by-side answers as Markdown, for the model card and the demo's `generations.md`."""
    lines = []
    for g in generations:
        lines += [f"**{g['prompt']}**", "", f"- base: {g['base']!r}",
                  f"- steered (λ = {g['strength']:g}): {g['steered']!r}", ""]
    return "\n".join(lines)
