"""Do sampled answers parse? SmolLM2-135M-Instruct's completions to the pronoun task, per prompt format (issue #14).

Sampled GRPO only learns from completions the parser can read. For each `prompt_format` of the pronoun task this draws
--samples completions of --max_new_tokens tokens (the training completion length) per held-out row at temperature 1
(the model's own distribution, as GRPO samples it) and reports the share that parse to an option (`parsed`), that
say "don't know" (`dont_know`) and the rest (`unparseable`), on ambiguous and unambiguous rows, plus the
base model's exact-estimator POB and expected unambiguous accuracy in that format (a format is only useful if the
model still shows its bias in it) and the most frequent unparsed completions (for the parser's real-output table).

    python benchmarks/parse_rate.py                       # -> benchmarks/results/parse_rate.json
    python benchmarks/parse_rate.py --formats question --samples 4
"""

from __future__ import annotations

import argparse
import os
import platform
import time

FORMATS = ("text", "chat", "question", "answer")
DEFAULT_OUTPUT = "benchmarks/results/parse_rate.json"


def measure_format(model, tokenizer, prompt_format: str, args) -> dict:
    import numpy as np

    from dso_trl.evaluation import EvaluationConfig, evaluate
    from dso_trl.evaluation.answers import answer_rates
    from dso_trl.tasks import load_task

    rows = load_task("pronoun", prompt_format=prompt_format, n_train=0, n_train_unambiguous=0, n_test=args.n_test,
                     n_test_unambiguous=args.n_test)["test"].to_list()
    start = time.perf_counter()
    rates = answer_rates(model, tokenizer, rows, num_samples=args.samples, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size, seed=args.seed)
    out = {"rows": len(rows), "samples_per_row": args.samples, "max_new_tokens": args.max_new_tokens,
           "sampling_s": time.perf_counter() - start, "example_prompt": rows[0]["prompt"],
           "option_completions": rows[0]["option_completions"], **rates.to_dict(args.examples)}
    config = EvaluationConfig(estimator="exact", batch_size=args.batch_size, n_boot=0, progress=False)
    with np.errstate(all="ignore"):
        metrics = evaluate(model, tokenizer, rows, config)
    out["base_exact"] = {"pob": metrics.pob, "unambiguous_accuracy": metrics.unambiguous_accuracy,
                         "stereotype_gap": metrics.stereotype_gap}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--n_test", type=int, default=80, help="held-out ambiguous rows, and as many unambiguous "
                        "(balanced over occupations; default 80)")
    parser.add_argument("--samples", type=int, default=8, help="completions per row (default 8)")
    parser.add_argument("--max_new_tokens", type=int, default=4, help="default 4, the training completion length")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--examples", type=int, default=15, help="most frequent completions to record")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    import torch

    from dso_trl.atomic import write_json_atomic
    from dso_trl.models import SMOLLM2_ID, load_smollm2

    model, tokenizer = load_smollm2()
    result = {"model": SMOLLM2_ID, "temperature": 1.0, "machine": {
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg()}, "formats": {}}
    for prompt_format in args.formats:
        result["formats"][prompt_format] = measure_format(model, tokenizer, prompt_format, args)
        shown = result["formats"][prompt_format]
        print(f"{prompt_format}: parse rate {shown['all']['parsed']:.3f} (ambiguous "
              f"{shown['ambiguous']['parsed']:.3f}), don't know {shown['all']['dont_know']:.3f}; base POB "
              f"{shown['base_exact']['pob']:.1f}, accuracy {shown['base_exact']['unambiguous_accuracy']:.1f}",
              flush=True)
        write_json_atomic(args.output, result)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    write_json_atomic(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
