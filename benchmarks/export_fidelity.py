"""How exactly an exported (folded) SmolLM2 reproduces the hooked steered model.

Exports SmolLM2-135M-Instruct with a foldable steering (`--steering`: e.g. the `foldable` steering that
`benchmarks/foldable_steering.py` trains; without it, a seeded random scale-only steering with entries of standard
deviation `--random_std`) at each λ, reloads the folder with plain `AutoModelForCausalLM`, and compares its logits on
the 40 bundled neutral sentences with the hooked model's: the largest and mean absolute difference, the logits'
spread, the steering's own effect on them, and how often the top token differs.

    python benchmarks/export_fidelity.py        # -> benchmarks/results/export_fidelity.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steering", default=None, help="A foldable steering folder (default: a random one).")
    parser.add_argument("--random_std", type=float, default=0.1)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.5, 1.0])
    parser.add_argument("--output", default="benchmarks/results/export_fidelity.json")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from dso_trl import Steering, SteeringConfig
    from dso_trl.evaluation import neutral_texts
    from dso_trl.models import load_smollm2

    model, tokenizer = load_smollm2()
    if args.steering:
        steering = Steering.from_pretrained(model, args.steering)
    else:
        steering = Steering.attach(model, SteeringConfig(use_shift=False))
        torch.manual_seed(0)
        with torch.no_grad():
            for param in steering.parameters():
                param.normal_(0, args.random_std)
    batch = tokenizer(neutral_texts(), return_tensors="pt", padding=True)
    mask = batch["attention_mask"].bool()
    points = []
    for strength in args.strengths:
        steering.set_strength(strength)
        with torch.no_grad():
            hooked = model(**batch).logits[mask]
            with steering.disabled():
                base = model(**batch).logits[mask]
        with tempfile.TemporaryDirectory() as folder:
            steering.export_pretrained(Path(folder) / "export", processing_class=tokenizer)
            exported = AutoModelForCausalLM.from_pretrained(Path(folder) / "export").eval()
            with torch.no_grad():
                folded = exported(**batch).logits[mask]
        difference = (folded - hooked).abs()
        points.append({"strength": strength, "positions": int(mask.sum()),
                       "max_abs_logit_difference": float(difference.max()),
                       "mean_abs_logit_difference": float(difference.mean()),
                       "logit_std": float(hooked.std()),
                       "max_abs_steering_effect": float((hooked - base).abs().max()),
                       "top_token_disagreement": float((folded.argmax(-1) != hooked.argmax(-1)).double().mean())})
        print(points[-1], flush=True)
    report = {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "dtype": "float32",
              "steering": args.steering or f"random scale-only, std {args.random_std}",
              "steering_parameters": steering.num_parameters(), "texts": "dso_trl/data/neutral_texts.txt",
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__}, "points": points}
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
