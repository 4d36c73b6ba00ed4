"""One judged figure of `edgetl check` (a budget, or a comparison with `--baseline`) and its statuses."""

from __future__ import annotations

from dataclasses import dataclass

PASS, FAIL, ERROR, SKIPPED = "pass", "fail", "error", "skipped"
NOT_JUDGED = "not judged"


@dataclass
class Verdict:
    budget: str  # latency_p95_ms | min_top1 | max_rss_mb, or baseline_latency_p95 | baseline_top1 | baseline_rss
    limit: float
    measured: float | None
    status: str  # pass | fail | not judged
    why: str = ""
    warning: str = ""  # also in `why`: e.g. a checkset too small to resolve what is asked of it

    @property
    def regression(self) -> bool:
        """A verdict of `--baseline` (against an earlier check), not of a budget."""
        return self.budget.startswith("baseline_")
