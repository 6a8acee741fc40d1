"""Own tasks used by the tests (named by import path ``tests.plugins:Name``), built on the sparse-attention task.

- ``FlakyTask``: raises ``RuntimeError`` once, in the training step at ``task.options["fail_at"]``; it remembers
  that it already failed through the marker file ``task.options["marker"]`` (so a retried trial gets past it).
- ``NaNTask``: its validation CE is NaN from step ``task.options["nan_at"]`` on.
"""

from __future__ import annotations

from pathlib import Path

from trainables.tasks import SparseAttentionTask


class FlakyTask(SparseAttentionTask):
    def loss(self, x, y):
        opts = self.cfg.task.options
        marker = Path(opts["marker"])
        if self.step == int(opts["fail_at"]) and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"failed at step {self.step}\n")
            raise RuntimeError(f"FlakyTask: planned failure at step {self.step}")
        return super().loss(x, y)


class NaNTask(SparseAttentionTask):
    def evaluate(self, val):
        out = super().evaluate(val)
        if self.step >= int(self.cfg.task.options["nan_at"]):
            out["val/ce"] = float("nan")
        return out
