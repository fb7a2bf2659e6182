"""The paper's fairness reward: punish the answer that agrees with the occupation's current dominant stereotype."""

from __future__ import annotations

from collections import Counter

from ..schema import require_columns
from .common import (NON_ANSWER_REWARD, Parser, answer_label, completion_text, default_parser, log_rates,
                     rows_from_columns)


class GenderParityReward:
    """DSO's per-sample fairness reward, a TRL reward callable
    `(prompts, completions, **columns) -> list[float | None]`.

    On an ambiguous row about occupation o, the answer's label is `pro` (it picks the stereotype-consistent option) or
    `anti`. With S*(o) the label the policy currently produces most often for o, the reward is −1 when the label is
    S*(o) and +1 otherwise, which pushes every occupation towards a 50/50 split (0 when there is no dominant label).
    Unambiguous rows and rows without a stereotype get `None` (not judged), so this combines with
    [`UnambiguousAccuracyReward`] through TRL's `reward_weights`.

    How S*(o) is estimated, on-policy: pro/anti counts of o in the current batch are added to a running count that
    decays by `momentum` at every call; S*(o) is the majority of the combined counts. With `momentum=0` only the current
    batch counts (the paper's "current" policy); the running part steadies the estimate for occupations with few
    samples in a batch. A sampled answer does not vote on its own reward: its S*(o) comes from the *other* answers
    (leave-one-out). Counting itself would make the majority agree with it more often than the policy does, so a fair
    50/50 policy would earn −E|pro − anti| / n < 0 per answer (−0.27 with 8 answers per occupation) and any
    non-answer paid 0 would beat it. Leaving it out, a fair policy earns exactly 0 in expectation and every biased one
    less. An optional `completion_weights` column weighs each completion in the counts: the exact estimator
    (`DSOConfig(estimator="exact")`) passes every option once, weighted by its probability under the policy, so the
    counts are the policy's expected answer counts, not random draws, and nothing is left out.

    No safe harbour: an answer that is not one of the row's options earns `unparseable_reward`, and one that says it
    does not know (the row's "don't know" option, or a don't-know phrase where the row offers none) earns
    `dont_know_reward`; both default to −1, the worst any pronoun/option answer can get, so neither going off-format
    nor abstaining ever beats a fair answer (which earns 0) in expectation. `dont_know_reward=0` makes abstaining
    exactly as good as a fair answer, never better: for tasks where "don't know" is a right answer on ambiguous rows.

    Logged (via TRL's `log_metric`): `parity/pro_fraction` (share of pro among pro+anti answers in the batch),
    `parity/batch_bias` (mean over the batch's occupations of |P(pro) − P(anti)|, in points), `parity/dont_know_rate`,
    `parity/unparseable_rate` (shares of the judged answers).
    """

    __name__ = "gender_parity"

    def __init__(self, parser: Parser | None = None, dont_know_reward: float = NON_ANSWER_REWARD,
                 unparseable_reward: float = NON_ANSWER_REWARD, momentum: float = 0.0):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.parser = parser or default_parser()
        self.dont_know_reward, self.unparseable_reward, self.momentum = dont_know_reward, unparseable_reward, momentum
        self.running: dict[str, Counter] = {}

    def dominant(self, occupation: str, leave_out: str | None = None) -> str | None:
        """S*(o) from the running counts, without one answer labelled `leave_out` (a sampled answer's own vote)."""
        counts = Counter(self.running.get(occupation, Counter()))
        if leave_out is not None:
            counts[leave_out] -= 1.0
        if counts["pro"] == counts["anti"]:
            return None
        return "pro" if counts["pro"] > counts["anti"] else "anti"

    def __call__(self, prompts, completions, log_metric=None, completion_weights=None, **columns) -> list[float | None]:
        rows = rows_from_columns(len(completions), columns)
        sampled = completion_weights is None
        weights = [1.0] * len(rows) if sampled else [float(w) for w in completion_weights]
        labels: list[str | None] = []
        require_columns(rows, "GenderParityReward")
        for completion, row in zip(completions, rows):
            labels.append(answer_label(self.parser, completion_text(completion), row) if row["ambiguous"] else None)

        batch: dict[str, Counter] = {}
        for label, row, weight in zip(labels, rows, weights):
            if label in ("pro", "anti"):
                batch.setdefault(row["occupation"], Counter())[label] += weight
        for counts in self.running.values():
            for key in counts:
                counts[key] *= self.momentum
        for occupation, counts in batch.items():
            self.running.setdefault(occupation, Counter()).update(counts)

        rewards: list[float | None] = []
        for label, row in zip(labels, rows):
            if label is None or label == "other":
                rewards.append(None)
            elif label == "dont_know":
                rewards.append(self.dont_know_reward)
            elif label == "unparseable":
                rewards.append(self.unparseable_reward)
            else:
                dominant = self.dominant(row["occupation"], leave_out=label if sampled else None)
                rewards.append(0.0 if dominant is None else (-1.0 if label == dominant else 1.0))
        if log_metric is not None:
            self._log(labels, weights, batch, log_metric)
        return rewards

    @staticmethod
    def _log(labels, weights, batch: dict[str, Counter], log_metric) -> None:
        pro, anti = sum(c["pro"] for c in batch.values()), sum(c["anti"] for c in batch.values())
        if pro + anti:
            log_metric("parity/pro_fraction", pro / (pro + anti))
            log_metric("parity/batch_bias", 100 * sum(abs(c["pro"] - c["anti"]) / (c["pro"] + c["anti"])
                                                      for c in batch.values()) / len(batch))
        log_rates("parity", labels, weights, log_metric)
