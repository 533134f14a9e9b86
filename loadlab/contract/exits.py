"""Exit codes: what `loadlab` (and the Locust suite, where it stops a run itself) tells a script.

    0    a verdict (the API was measured; read verdict.json for what it says)
    1    a component failed (the target, the sidecar, Locust, Prometheus): no trustworthy verdict;
         also a source on the API's machine that stopped answering and left the limiting resource
         unknown (the capacity is measured, what ran out is not)
    2    usage or input error: a flag, a path, a damaged input file; nothing was measured
    3    the API failed functionally: its answers are errors at light load (or to the preflight's
         own requests), so there is no capacity to report; fix the API or the suite's settings
    4    a --gate failed, or `run --baseline` found a regression (`loadlab compare` says 1 for that)
    130  interrupted (Ctrl-C, SIGTERM)
"""

from __future__ import annotations

EXIT_VERDICT = 0
EXIT_COMPONENT_FAILED = 1
EXIT_USAGE = 2
EXIT_API_FAILED = 3
EXIT_GATE = 4
EXIT_INTERRUPTED = 130
# `loadlab compare` alone: 1 is "regressed" (no component runs there, so 1 cannot mean a failure).
COMPARE_REGRESSED = 1
