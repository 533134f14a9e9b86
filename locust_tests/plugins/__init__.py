"""Locust plugins of the suite. Each module registers its own Locust event listeners when imported,
so a locustfile enables exactly the plugins it imports:

- exporter:  Prometheus metrics from Locust's own stats (`--exporter-port`, `/metrics` on the web UI)
- labtab:    the Lab tab on the web UI (`/lab`): resources, load and the live verdict (drawn by `labview`)
- webauth:   the account behind Locust's `--web-login` (LOCUST_WEB_PASSWORD, LOCUST_WEB_USERNAME)
- preflight: refuse to start against a host that does not answer (`--skip-preflight`)
- shapes:    named presets and the step hunt (`--scenario`, `--time-scale`, `--step-*`)
- runid:     a run id shared by master and workers, for usernames unique across machines
- seeding:   create the login scenario's users before the load starts
- cleanup:   delete the users a run created (`--keep-users`; needs LAB_ADMIN_TOKEN)

Modules without Locust listeners (presets, collector, testdata, checks, labview, and cleanup's
`delete_users`) never import Locust, so other tools can use them without gevent's monkey patching.
"""
