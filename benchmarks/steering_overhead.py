"""Forward latency of SmolLM2-135M-Instruct: base vs hooked steering vs folded steering.

Three copies of the model are timed in interleaved rounds (base, hooked, folded, base, ...) so that drift in machine
load hits all three alike; each figure is the median over rounds, and the ratios are to the base model measured in
the same run. Goal (issue 2): hooked ≤ 1.10×, folded ≤ 1.01×.

    python benchmarks/steering_overhead.py                      # CPU, fp32
    python benchmarks/steering_overhead.py --device cuda --dtype bfloat16
    python benchmarks/steering_overhead.py --config benchmarks/smollm2_config.json   # random weights, same shapes

`--config` builds the model from a config with random weights (latency does not depend on the weights' values): for a
machine without the SmolLM2 package, e.g. a GPU machine with no network.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch

from dso_trl import Steering, SteeringConfig
from dso_trl.atomic import write_json_atomic
from dso_trl.models import load_smollm2


def random_steering(model, config: SteeringConfig) -> Steering:
    steering = Steering.attach(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in steering.parameters():
            param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    return steering


def time_forward(model, input_ids, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        model(input_ids=input_ids, use_cache=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per model (median reported); >= 5")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--config", help="build the model from this config.json with random weights instead")
    parser.add_argument("--output", default="benchmarks/results/steering_overhead.json")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    if args.config:
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.config), dtype=dtype).eval()
    else:
        base, _ = load_smollm2(dtype=dtype)
    base.to(device)
    hooked = copy.deepcopy(base)
    random_steering(hooked, SteeringConfig())  # scale and shift on all 61 norms, applied by hooks
    folded = copy.deepcopy(base)
    random_steering(folded, SteeringConfig(shift_sites="foldable")).fold(strict=True)
    models = {"base": base, "hooked": hooked, "folded": folded}

    results = []
    for batch in args.batch_sizes:
        input_ids = torch.randint(100, 40000, (batch, args.tokens), generator=torch.Generator().manual_seed(batch))
        input_ids = input_ids.to(device)
        for model in models.values():
            for _ in range(args.warmup):
                time_forward(model, input_ids, device)
        times = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                times[name].append(time_forward(model, input_ids, device))
        medians = {name: statistics.median(values) for name, values in times.items()}
        row = {"batch_size": batch, "tokens": args.tokens, "median_ms": {k: 1e3 * v for k, v in medians.items()},
               "ratio_to_base": {k: v / medians["base"] for k, v in medians.items()}}
        results.append(row)
        print(f"batch {batch:>2} × {args.tokens} tokens: " + ", ".join(
            f"{name} {1e3 * medians[name]:.2f} ms ({row['ratio_to_base'][name]:.3f}×)" for name in models))

    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "device": str(device),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "model": "SmolLM2-135M-Instruct" + (" (random weights)" if args.config else ""), "dtype": args.dtype,
        "rounds": args.rounds, "results": results,
    }
    write_json_atomic(Path(args.output), report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
