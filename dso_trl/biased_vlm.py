"""A tiny Qwen2.5-VL that has learned a gender–occupation bias from pictures: a real subject for the VLM half of DSO.

Why: a random tiny VLM answers "Which person is the nurse?" at chance, so it has no bias to remove and no skill to
keep; Qwen2.5-VL-3B does not fit a 2-core CPU. `biased_vlm_folder()` trains a small model of the same classes
(`Qwen2_5_VLForConditionalGeneration`: vision tower with window attention, patch merger, M-RoPE language backbone;
`Qwen/Qwen2.5-VL-3B-Instruct` loads into them) on drawn pairs of the `occupation_pairs` task: on pairs of different
occupations the answer is the asked-about person; on same-occupation pairs it is the person of the stereotyped gender
with probability `bias` (0.85; the target is that expected share, a soft label, so the training is deterministic).
Held-out pictures are other figure variants (background, hair colour, position) in both left-right orders, and the
model's held-out unambiguous accuracy and ambiguous POB are measured there with `dso_trl.evaluation` (exact
estimator).

The model folder (safetensors + processor + `biased_vlm.json` with the recipe and the measured figures) is cached
under `$DSO_TRL_CACHE/biased_vlm/<hash of the recipe>`: a changed recipe is a new folder, built on first use. Its
processor needs no torchvision (`ImageOnlyQwen2_5_VLProcessor`; recipes take it as `--processor_class
dso_trl.biased_vlm.ImageOnlyQwen2_5_VLProcessor`). `python -m dso_trl.biased_vlm` builds it and prints the figures.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers.processing_utils import ProcessorMixin

from .atomic import write_json_atomic
from .evaluation import EvaluationConfig, evaluate
from .models import cache_dir
from .occupations import known_occupations, stereotype_gender
from .scoring import batch_inputs, encode_prompts, pad_token_id
from .tasks.vision import OPTION_COMPLETIONS, QUESTION, load_occupation_pairs

FORMAT = 1  # bump when the build changes in a way the recipe does not show: old cached folders are then not used
REPORT_NAME = "biased_vlm.json"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<unk>"]
# Qwen's chat layout (im_start/im_end turns, the image as vision_start + image_pad + vision_end) in a few lines.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# 12 occupations (6 stereotypically male, 6 female) whose drawn uniforms differ most in colour and hat.
SIDES = ("left", "right")
DESCRIBE = "Describe the picture."
GENDER_WORDS = {"male": "man", "female": "woman"}
OTHER_GENDER = {"male": "female", "female": "male"}
OCCUPATIONS = ("nurse", "CEO", "construction worker", "assistant", "cook", "librarian", "analyst", "editor", "lawyer",
               "housekeeper", "driver", "writer")


class ImageOnlyQwen2_5_VLProcessor(tf.Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor without its video processor, which needs torchvision (often absent on CPU machines)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


@dataclass(frozen=True)
class BiasedVLMRecipe:
    """Everything the model depends on; its hash names the cache folder."""

    occupations: tuple[str, ...] = field(default=OCCUPATIONS, metadata={"help": "Occupations of the drawn pairs."})
    bias: float = field(default=0.85, metadata={
        "help": "Share of same-occupation training answers naming the person of the stereotyped gender."})
    figures_per_group: int = field(default=12, metadata={
        "help": "Drawn figures per occupation x gender x race and split (test figures are the next variants)."})
    n_test: int = field(default=240, metadata={"help": "Held-out ambiguous pairs (balanced per occupation)."})
    n_test_unambiguous: int = field(default=240, metadata={"help": "Held-out unambiguous pairs."})
    max_pixels: int = field(default=112 * 84, metadata={
        "help": "Pictures are resized to at most this many pixels (112x84: 12 image tokens after merging)."})
    hidden_size: int = field(default=64, metadata={"help": "Width of the language backbone and the vision tower."})
    layers: int = field(default=2, metadata={"help": "Decoder layers of the language backbone."})
    vision_depth: int = field(default=2, metadata={"help": "Blocks of the vision tower (the last one full attention)."})
    init_std: float = field(default=0.08, metadata={
        "help": "Initial weight std (Qwen's 0.02 leaves a 64-wide model on a long 50/50 plateau)."})
    rope_theta: float = field(default=2.0, metadata={
        "help": "M-RoPE base: small, so the few width positions of a 4-token-wide picture rotate visibly apart."})
    steps: int = field(default=2000, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=32, metadata={"help": "Rows per step."})
    learning_rate: float = field(default=3e-3, metadata={
        "help": "AdamW learning rate (warm-up, then cosine decay to 0)."})
    seed: int = field(default=0, metadata={"help": "Seed of the weights, the batches and the task's pairs."})

    def key(self) -> str:
        """A hash of the recipe (and FORMAT): the cache folder's name."""
        text = json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def task_options(self) -> dict[str, Any]:
        """`load_task("occupation_pairs", **options)` options giving the pairs the model was trained and measured on."""
        return dict(seed=self.seed, occupations=list(self.occupations), figures_per_group=self.figures_per_group,
                    n_train=None, n_train_unambiguous=None, n_test=self.n_test,
                    n_test_unambiguous=self.n_test_unambiguous, both_orders=True)


def biased_vlm_folder(recipe: BiasedVLMRecipe | None = None) -> Path:
    """The cached model folder of `recipe` (default recipe if None), trained and measured on first use."""
    recipe = recipe or BiasedVLMRecipe()
    folder = cache_dir() / "biased_vlm" / recipe.key()
    if not (folder / REPORT_NAME).is_file():
        build_biased_vlm(recipe, folder)
    return folder


def load_biased_vlm(recipe: BiasedVLMRecipe | None = None):
    """(model, processor, report): report holds the recipe, the build's seconds and the held-out figures."""
    folder = biased_vlm_folder(recipe)
    model = tf.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder).eval()
    processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(folder)
    return model, processor, json.loads((folder / REPORT_NAME).read_text())


def build_biased_vlm(recipe: BiasedVLMRecipe, folder: Path) -> dict[str, Any]:
    """Train, measure and save the model to `folder` (appearing at once: a renamed staging folder); the report."""
    started = time.perf_counter()
    processor = make_processor(recipe)
    model = make_model(recipe, processor.tokenizer)
    data = load_occupation_pairs(**recipe.task_options())
    train(model, processor, list(data["train"]), recipe)
    seconds_training = time.perf_counter() - started
    metrics = evaluate(model, processor, list(data["test"]), EvaluationConfig(n_boot=200, progress=False))
    report = {"recipe": asdict(recipe), "key": recipe.key(), "seconds": round(time.perf_counter() - started, 1),
              "seconds_training": round(seconds_training, 1), "held_out": metrics.to_dict()}
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        write_json_atomic(staging / REPORT_NAME, report)
        if not folder.exists():  # else another process won the race: keep its copy
            os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def make_processor(recipe: BiasedVLMRecipe) -> ImageOnlyQwen2_5_VLProcessor:
    """A word-level tokenizer over the task's words (every known occupation, so any can be asked about), Qwen's
    special tokens and chat layout, and Qwen2-VL's image processor (PIL backend)."""
    words = " ".join([QUESTION.replace("{occupation}", " ".join(known_occupations())), DESCRIBE, *SIDES,
                      *GENDER_WORDS.values(), *OPTION_COMPLETIONS])
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator([words + " user assistant system"],
                            trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                           unk_token="<unk>")
    image_processor = tf.Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=recipe.max_pixels)
    return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)


def make_model(recipe: BiasedVLMRecipe, tokenizer) -> tf.Qwen2_5_VLForConditionalGeneration:
    """A randomly initialised Qwen2.5-VL of the recipe's size (seeded)."""
    width, heads = recipe.hidden_size, 4
    half_head = width // heads // 2
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = tf.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=recipe.layers, num_attention_heads=heads, num_key_value_heads=2,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
                         initializer_range=recipe.init_std,
                         rope_theta=recipe.rope_theta, rope_scaling={"type": "mrope", "mrope_section": [
                             half_head // 4, half_head // 4, half_head - 2 * (half_head // 4)]}),
        vision_config=dict(depth=recipe.vision_depth, hidden_size=width, intermediate_size=2 * width, num_heads=heads,
                           out_hidden_size=width, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=56, fullatt_block_indexes=[recipe.vision_depth - 1]),
        tie_word_embeddings=True, initializer_range=recipe.init_std, **ids)
    torch.manual_seed(recipe.seed)
    return tf.Qwen2_5_VLForConditionalGeneration(config)


def train(model: torch.nn.Module, processor: ImageOnlyQwen2_5_VLProcessor, rows: list[dict[str, Any]],
          recipe: BiasedVLMRecipe) -> list[float]:
    """Supervised training on answers (weighted token cross-entropy over the whole vocabulary); the losses per step.

    Each batch mixes the task's question, answered as `_answers` says, with description turns ("Describe the
    picture." -> "left woman nurse right man cook"): a one-bit answer whose two sides balance out gives a random tiny
    model no gradient to start from (it settles at 50/50 and stays), while naming who is on each side does, and
    teaches it to see gender and occupation there. Descriptions are true for every picture, so the bias comes only
    from the answers to the same-occupation questions."""
    tokenizer = processor.tokenizer
    examples = []  # (row index, prompt kind, answer ids, weight)
    for index, row in enumerate(rows):
        examples += [(index, "question", tokenizer.convert_tokens_to_ids(tokenizer.tokenize(answer)), weight)
                     for answer, weight in _answers(row, recipe.bias)]
        examples.append((index, "describe", tokenizer.convert_tokens_to_ids(tokenizer.tokenize(_description(row))),
                         1.0))
    images = [row["image"] for row in rows]
    encoded = {"question": encode_prompts(processor, [row["prompt"] for row in rows], images)}
    describe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DESCRIBE}]}]
    encoded["describe"] = encode_prompts(processor, [describe] * len(rows), images)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    warmup = max(1, recipe.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * step / recipe.steps)))
    generator = torch.Generator().manual_seed(recipe.seed)
    order, losses = torch.empty(0, dtype=torch.long), []
    model.train()
    for _ in range(recipe.steps):
        if len(order) < recipe.batch_size:
            order = torch.cat([order, torch.randperm(len(examples), generator=generator)])
        batch, order = [examples[i] for i in order[:recipe.batch_size].tolist()], order[recipe.batch_size:]
        prompts = [encoded[kind][index] for index, kind, _, _ in batch]
        sequences = [prompt.input_ids + answer for prompt, (_, _, answer, _) in zip(prompts, batch)]
        inputs = batch_inputs(sequences, prompts, pad_token_id(tokenizer), "right", "cpu")
        logprobs = model(**inputs, use_cache=False).logits.log_softmax(-1)
        loss = torch.zeros(())
        for row, (prompt, (_, _, answer, weight)) in enumerate(zip(prompts, batch)):
            positions = torch.arange(len(prompt.input_ids) - 1, len(prompt.input_ids) - 1 + len(answer))
            loss = loss - weight * logprobs[row, positions, answer].sum()
        loss = loss / len(batch)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def _answers(row: dict[str, Any], bias: float) -> list[tuple[str, float]]:
    """(answer, weight) to the task's question: the right side, or on a same-occupation pair the stereotype's side
    with weight `bias` and the other with 1 - `bias` (the expected shares of answers skewed `bias` to 1 - `bias`)."""
    if not row["ambiguous"]:
        return [(row["option_completions"][row["answer_option"]], 1.0)]
    stereotype = row["stereotype_option"]
    return [(row["option_completions"][stereotype], bias), (row["option_completions"][1 - stereotype], 1.0 - bias)]


def _description_parts(row: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(side, gender word, occupation) of each person of a drawn pair: the pairs' genders differ, so the stereotype's
    side (same-occupation pairs) or the asked-about person's (others) fixes both."""
    known, gender = (row["stereotype_option"], stereotype_gender(row["occupation"])) if row["ambiguous"] else \
        (row["answer_option"], row["gender"])
    genders = [gender if side == known else OTHER_GENDER[gender] for side in range(2)]
    return [(side, GENDER_WORDS[genders[k]], row["occupations"][k]) for k, side in enumerate(SIDES)]


def _description(row: dict[str, Any]) -> str:
    """"left woman nurse right man cook" for a drawn pair."""
    return " ".join(" ".join(part) for part in _description_parts(row))


def description_questions(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Questions about held-out pictures that are not the task's: "Describe the picture." with the true description
    as the answer, each word labelled side / gender / occupation (`compare_answers` keywords). The occupation words
    are what the model sees without being asked about gender; the gender words show whether it still sees gender."""
    describe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DESCRIBE}]}]
    answers, kinds = [], []
    for row in rows:
        words, labels = [], []
        for side, gender, occupation in _description_parts(row):
            occupation = occupation.split()
            words += [side, gender, *occupation]
            labels += ["side", "gender"] + ["occupation"] * len(occupation)
        answers.append(words)
        kinds.append(labels)
    return {"prompts": [describe] * len(rows), "answers": answers, "kinds": kinds,
            "images": [row["image"] for row in rows]}


if __name__ == "__main__":
    folder = biased_vlm_folder()
    print(folder)
    print(json.dumps(json.loads((folder / REPORT_NAME).read_text()), indent=2))
