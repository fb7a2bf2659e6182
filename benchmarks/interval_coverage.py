"""Coverage of dso_trl's bootstrap intervals, by simulation: tables drawn from a model whose true figures are known.

Each scenario draws `--tables` evaluation tables with the demo's design (40 occupations, 10 ambiguous and 10
unambiguous rows each, exact estimator). A row's probability of the stereotypical answer is its occupation's level
plus template noise, `sigmoid(logit(level) + N(0, noise²))`, so rows of an occupation differ as held-out templates do;
the true POB and accuracy are the means over that row distribution, computed from 200,000 draws per occupation. For
every table `compute_metrics` (1,000 resamples, 95%) gives the intervals; we count how often they contain the true
value (coverage, nominal 95%) and whether they contain their own point estimate. As baselines, measured on the same
resamples: the percentile interval of plain POB (dso_trl's first intervals) and the basic (reverse-percentile) interval
of the bootstrap bias-corrected POB (its second), against the test-inversion interval of `pob_debiased` it ships now.

    python benchmarks/interval_coverage.py            # 300 tables; writes benchmarks/results/interval_coverage.json
    python benchmarks/interval_coverage.py --tables 50 --output /tmp/coverage.json   # a quick look

The figure (docs/images/interval_coverage.png) is drawn from the JSON.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from dso_trl.atomic import write_atomic, write_json_atomic
from dso_trl.evaluation import compute_metrics
from dso_trl.evaluation.metrics import _bootstrap_sums, _figures, basic_interval
from dso_trl.evaluation.table import ChoiceTable

OCCUPATIONS, ROWS = 40, 10
# Stereotype levels (probability of the stereotypical answer) per occupation, drawn once per scenario.
SCENARIOS = {
    "unbiased (true POB 0)": lambda rng: np.full(OCCUPATIONS, 0.5),
    "slightly biased (like steered SmolLM2)": lambda rng: 0.5 + rng.normal(0, 0.025, OCCUPATIONS),
    "biased (like base SmolLM2)": lambda rng: np.clip(0.5 + rng.normal(0.1, 0.15, OCCUPATIONS), 0.02, 0.98),
}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def draw_table(rng: np.random.Generator, levels: np.ndarray, noise: float, accuracy_logit: float) -> ChoiceTable:
    """One table: per occupation ROWS ambiguous rows (option 0 stereotypical) and ROWS unambiguous ones (answer 0)."""
    rows, probabilities = [], []
    for o, level in enumerate(levels):
        pro = sigmoid(logit(level) + rng.normal(0, noise, ROWS))
        gold = sigmoid(accuracy_logit + rng.normal(0, noise, ROWS))
        for p in pro:
            rows.append(dict(prompt="", option_completions=["", ""], occupation=f"job{o}", ambiguous=True,
                             answer_option=-1, stereotype_option=0, dont_know_option=-1, options=["he", "she"]))
            probabilities.append([p, 1 - p])
        for p in gold:
            rows.append(dict(prompt="", option_completions=["", ""], occupation=f"job{o}", ambiguous=False,
                             answer_option=0, stereotype_option=0, dont_know_option=-1, options=["he", "she"]))
            probabilities.append([p, 1 - p])
    return ChoiceTable.from_rows(rows, np.array(probabilities), "exact")


def true_figures(levels: np.ndarray, noise: float, accuracy_logit: float, draws: int = 200_000) -> dict[str, float]:
    rng = np.random.default_rng(12345)
    bias = [np.mean(2 * sigmoid(logit(level) + rng.normal(0, noise, draws)) - 1) for level in levels]
    accuracy = np.mean(sigmoid(accuracy_logit + rng.normal(0, noise, draws)))
    return {"pob": 100 * float(np.mean(np.abs(bias))), "unambiguous_accuracy": 100 * float(accuracy)}


def earlier_pob_intervals(table: ChoiceTable, pob: float, n_boot: int, seed: int, confidence: float
                          ) -> tuple[tuple[float, float], tuple[float, float]]:
    """The earlier intervals of POB, from the same resamples as compute_metrics: the percentile interval of plain POB,
    and the basic interval of the bootstrap bias-corrected POB."""
    occupations = sorted(set(table.occupation))
    index = np.array([occupations.index(o) for o in table.occupation])
    samples = _figures(_bootstrap_sums(table, index, len(occupations), n_boot, seed))["pob"]
    tail = 100 * (1 - confidence) / 2
    percentile = float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))
    return percentile, basic_interval(pob, samples, confidence, (0.0, 100.0))[1]


def run_scenario(name: str, tables: int, n_boot: int, noise: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    levels = SCENARIOS[name](rng)
    truth = true_figures(levels, noise, accuracy_logit=2.0)
    counts = dict.fromkeys(["pob_debiased_covers", "basic_covers", "percentile_covers", "accuracy_covers",
                            "pob_debiased_contains", "accuracy_contains", "percentile_contains_pob"], 0)
    estimates = {"pob": [], "pob_debiased": []}
    for t in range(tables):
        table = draw_table(rng, levels, noise, accuracy_logit=2.0)
        m = compute_metrics(table, n_boot=n_boot, seed=t)
        low, high = m.intervals["pob_debiased"]
        (p_low, p_high), (b_low, b_high) = earlier_pob_intervals(table, m.pob, n_boot, t, m.confidence)
        a_low, a_high = m.intervals["unambiguous_accuracy"]
        counts["pob_debiased_covers"] += low <= truth["pob"] <= high
        counts["basic_covers"] += b_low <= truth["pob"] <= b_high
        counts["percentile_covers"] += p_low <= truth["pob"] <= p_high
        counts["accuracy_covers"] += a_low <= truth["unambiguous_accuracy"] <= a_high
        counts["pob_debiased_contains"] += low <= m.pob_debiased <= high
        counts["accuracy_contains"] += a_low <= m.unambiguous_accuracy <= a_high
        counts["percentile_contains_pob"] += p_low <= m.pob <= p_high
        estimates["pob"].append(m.pob)
        estimates["pob_debiased"].append(m.pob_debiased)
    return {"scenario": name, "tables": tables, "true": truth,
            "mean_estimate": {k: float(np.mean(v)) for k, v in estimates.items()},
            "rates": {k: v / tables for k, v in counts.items()}}


def plot(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    scenarios = results["scenarios"]
    x = np.arange(len(scenarios))
    bars = [("percentile_covers", "POB, percentile interval (first)"),
            ("basic_covers", "bootstrap-corrected POB, basic interval (second)"),
            ("pob_debiased_covers", "median-unbiased POB, test inversion (now)"),
            ("accuracy_covers", "accuracy, basic interval")]
    for i, (key, label) in enumerate(bars):
        ax.bar(x + (i - 1.5) * 0.2, [100 * s["rates"][key] for s in scenarios], width=0.2, label=label)
    ax.axhline(100 * results["confidence"], color="black", linestyle="--", linewidth=1, label="nominal 95%")
    ax.set_xticks(x, [f"{s['scenario']}\ntrue POB {s['true']['pob']:.1f}" for s in scenarios], fontsize=8)
    ax.set(ylabel="coverage of the true value (%)", ylim=(0, 105),
           title=f"Coverage of 95% bootstrap intervals ({scenarios[0]['tables']} simulated tables per scenario)")
    ax.legend(fontsize=8, loc="lower left")
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=int, default=100, help="simulated tables per scenario")
    parser.add_argument("--n_boot", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.4, help="sd of the per-row template noise, in logits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/interval_coverage.json")
    parser.add_argument("--figure", default="docs/images/interval_coverage.png")
    args = parser.parse_args()
    start = time.perf_counter()
    scenarios = [run_scenario(name, args.tables, args.n_boot, args.noise, args.seed + i)
                 for i, name in enumerate(SCENARIOS)]
    results = {"design": {"occupations": OCCUPATIONS, "ambiguous_rows_per_occupation": ROWS,
                          "unambiguous_rows_per_occupation": ROWS, "noise_logit_sd": args.noise,
                          "n_boot": args.n_boot, "seed": args.seed},
               "confidence": 0.95, "scenarios": scenarios, "seconds": time.perf_counter() - start,
               "machine": platform.platform()}
    write_json_atomic(args.output, results)
    plot(results, Path(args.figure))
    for s in scenarios:
        rates = ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["rates"].items())
        print(f"{s['scenario']}: true POB {s['true']['pob']:.2f}, mean plain {s['mean_estimate']['pob']:.2f}, "
              f"mean debiased {s['mean_estimate']['pob_debiased']:.2f}; {rates}")


if __name__ == "__main__":
    main()
