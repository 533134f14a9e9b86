"""The ground floor: the names, numbers and rules every part of the lab must agree on.

The target, the sidecar, the Locust suite, the monitoring generators and the lab runner all
stand on this package, and it stands on nothing of theirs: it imports no other part of the
project (a test enforces this). Change a name, a port, a threshold, a scenario or a bucket
here and every part changes with it.

    names       process groups, scrape jobs, default ports
    thresholds  SLO and saturation thresholds, and how a run chooses them
    slo         the one SLO judge: does a step breach the SLO
    scenarios   the scenario catalogue (presets and the step hunt's defaults)
    histograms  latency buckets, histogram quantile, counter increase
    cores       how many cores a process group can use
    exits       exit codes (0 verdict, 1 component failed, 2 usage/input, 3 API failed, 130 interrupted)
    live        the live view's file (`live.json`) the lab writes and Locust's Lab tab shows
"""
