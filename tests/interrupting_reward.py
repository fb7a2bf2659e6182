"""A reward for the resume tests: `GenderParityReward` that logs each step it scores (to `$DSO_TEST_STEP_LOG`) and
kills its own process with SIGKILL at step `$DSO_TEST_KILL_AT_STEP`, as a crash or an out-of-memory kill would."""

from __future__ import annotations

import os
import signal

from dso_trl.rewards import GenderParityReward


class InterruptingParityReward(GenderParityReward):
    def __call__(self, prompts, completions, **columns):
        step = columns["trainer_state"].global_step
        if os.environ.get("DSO_TEST_STEP_LOG"):
            with open(os.environ["DSO_TEST_STEP_LOG"], "a") as log:
                log.write(f"{step}\n")
        if str(step) == os.environ.get("DSO_TEST_KILL_AT_STEP"):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(prompts, completions, **columns)
