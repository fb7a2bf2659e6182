"""benchmarks/training.py's clocks and held-out evaluation: the exact-estimator evaluator, the callback that times
every optimizer step and evaluates outside the training clock, and the process's peak RSS."""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any

from _training_options import Options, target_pob_of


def log(message: str) -> None:
    print(message, flush=True)


class HeldOutEvaluator:
    """POB on the ambiguous test rows, and expected accuracy on the unambiguous ones, from the exact estimator."""

    def __init__(self, tokenizer, test_rows: list[dict], opts: Options):
        from dso_trl.evaluation import EvaluationConfig

        self.tokenizer = tokenizer
        self.ambiguous = [row for row in test_rows if row["ambiguous"]]
        self.unambiguous = [row for row in test_rows if not row["ambiguous"]]
        self.config = EvaluationConfig(estimator="exact", batch_size=opts.eval_batch_size, n_boot=0, progress=False)
        self.answer_rows, self.opts = test_rows[:opts.answer_rows], opts

    def _metrics(self, model, rows):
        import numpy as np

        from dso_trl.evaluation import evaluate

        with warnings.catch_warnings(), np.errstate(all="ignore"):  # one kind of row only: the other figure is NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return evaluate(model, self.tokenizer, rows, self.config)

    def pob(self, model) -> float:
        return float(self._metrics(model, self.ambiguous).pob)

    def accuracy(self, model) -> float:
        return float(self._metrics(model, self.unambiguous).unambiguous_accuracy)

    def answer_rates(self, model) -> dict[str, Any] | None:
        """Parsed / don't-know / unparseable shares of sampled answers (temperature 1, the training completion
        length) on the first --answer_rows test rows: a policy that stops answering shows here."""
        from dso_trl.evaluation.answers import answer_rates

        if not self.answer_rows:
            return None
        rates = answer_rates(model, self.tokenizer, self.answer_rows, num_samples=self.opts.answer_samples,
                             max_new_tokens=self.opts.answer_max_tokens, batch_size=self.opts.eval_batch_size,
                             seed=self.opts.seed)
        return rates.to_dict(examples=10)


def make_callback(method: str, evaluator: HeldOutEvaluator, base: dict[str, float], budget_s: float, opts: Options):
    from transformers import TrainerCallback

    accuracy_floor = base["unambiguous_accuracy"] - opts.max_accuracy_drop
    target_pob = target_pob_of(method, opts)

    class TimeToTarget(TrainerCallback):
        """Times every optimizer step, evaluates every `eval_every` steps (outside the training clock), and stops
        training at the target, at the budget or at max_steps, evaluating the last step."""

        def __init__(self):
            self.step_times: list[float] = []
            self.train_time = self.eval_time = 0.0
            self.evaluations: list[dict[str, Any]] = []
            self.reached: dict[str, Any] | None = None
            self.stopped_by = "max_steps"
            self._mark = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._mark = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            elapsed = time.perf_counter() - self._mark
            self.step_times.append(elapsed)
            self.train_time += elapsed
            step = state.global_step
            out_of_budget = self.train_time >= budget_s
            last = out_of_budget or step >= state.max_steps
            if not opts.quiet:
                log(f"[{method}] step {step:>4}: {elapsed:6.2f} s   training clock {self.train_time:7.1f} s "
                    f"/ budget {budget_s:.0f} s")
            if step % opts.eval_every == 0 or last:
                start = time.perf_counter()
                pob = evaluator.pob(model)
                accuracy = evaluator.accuracy(model) if pob <= target_pob or last else None
                seconds = time.perf_counter() - start
                self.eval_time += seconds
                met = accuracy is not None and pob <= target_pob and accuracy >= accuracy_floor
                self.evaluations.append({"step": step, "train_time_s": self.train_time, "pob": pob,
                                         "unambiguous_accuracy": accuracy, "target_met": met, "eval_time_s": seconds})
                shown = "not scored (POB above target)" if accuracy is None else f"{accuracy:.1f}"
                log(f"[{method}] eval @ step {step} (training clock {self.train_time:.1f} s): POB {pob:.1f}, "
                    f"unambiguous accuracy {shown}{'  -> TARGET MET' if met else ''}   [eval {seconds:.1f} s]")
                if met:
                    self.reached = {"step": step, "train_time_s": self.train_time}
                    self.stopped_by = "target"
                    control.should_training_stop = True
            if last and self.reached is None:
                self.stopped_by = "budget" if out_of_budget else "max_steps"
                control.should_training_stop = True
            self._mark = time.perf_counter()

    return TimeToTarget()


def peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux
