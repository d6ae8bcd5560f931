"""The real trainer (``loopd.backends.trl_dpo``) with one fault injected, for tests.

``LOOPD_TEST_FAULT`` picks it; the fault strikes right after the trainer planned its
micro-batches and told the parent, which is where a real OOM strikes too:

- ``sigkill_once``: the first attempt dies by SIGKILL (what the kernel's OOM killer does);
- ``oom_once``: the first attempt asks torch for an impossible tensor, a real allocator
  failure ("can't allocate memory");
- ``oom_always``: every attempt does.

Later attempts (the parent passes a ``micro_batch_cap``) train for real unless always.
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from loopd.backends import trl_dpo

FAULT = os.environ["LOOPD_TEST_FAULT"]
real_plan_round = trl_dpo.plan_round


def plan_round(job, seq_len):
    plan = real_plan_round(job, seq_len)
    first = job.get("micro_batch_cap") is None
    if FAULT == "oom_always" or first:
        trl_dpo.emit("plan", **trl_dpo._plan_fields(plan))
        if FAULT == "sigkill_once":
            os.kill(os.getpid(), signal.SIGKILL)
        torch.empty(2**50, dtype=torch.uint8)  # a petabyte: the allocator refuses
    return plan


trl_dpo.plan_round = plan_round
sys.exit(trl_dpo.main(sys.argv[1]))
