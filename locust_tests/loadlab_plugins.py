"""The lab's plugins for a locustfile of your own: `loadlab run --locustfile mine.py` runs

    locust -f mine.py,locust_tests/loadlab_plugins.py --scenario step ...

Locust loads every file of a comma-separated `-f` into one run (`locust.main.merge_locustfiles_content`):
their User classes and LoadTestShapes are merged, and each file's plugins register their event
listeners. So your file needs no import from this project, and this one adds what makes sense for
any API:

- exporter:  Prometheus metrics from Locust's own stats, which the lab samples and judges
- shapes:    the step hunt (`--scenario step`, `--step-users`, `--step-time`, `--max-users`,
             `--no-stop-on-break`, `--time-scale`); a concrete LoadTestShape of your own wins, and
             then no step hunt runs
- runid:     a run id shared by master and workers
- preflight: only "does anything answer at --host" (GET HEALTH_ENDPOINT, any status passes): this
             file declares no probes of the bundled scenarios' endpoints

and leaves out what belongs to the bundled login/registration scenarios: seeding, their
preflight requests and the cleanup of their test accounts. It defines no User class.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

# Event listeners run in import order. shapes goes first: its init listener logs whether the file's own
# LoadTestShape runs, and the lab reads that line as soon as the exporter (whose init listener starts
# serving) answers.
# isort: off
from locust_tests.plugins import shapes  # noqa: E402,F401  (event listeners)
from locust_tests.plugins import exporter, preflight, runid  # noqa: E402,F401
# isort: on
