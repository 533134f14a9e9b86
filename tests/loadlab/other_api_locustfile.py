"""A locustfile for tests/loadlab/other_api.py as its own team would write it: plain Locust, no
import from this project. `loadlab run --locustfile` adds the lab's plugins beside it."""

import secrets

from locust import FastHttpUser, between, task


class Customer(FastHttpUser):
    wait_time = between(0.4, 0.6)

    def on_start(self):
        self.login = f"lf_{secrets.token_hex(6)}"
        self.secret = secrets.token_urlsafe(12)
        account = {"login": self.login, "mail": f"{self.login}@example.com", "secret": self.secret}
        self.client.post("/api/v2/accounts", json={"account": account}, name="create account")

    @task
    def sign_in(self):
        body = {"login": self.login, "secret": self.secret}
        with self.client.post("/api/v2/auth/token", json=body, name="sign in", catch_response=True) as response:
            if response.status_code != 200 or not (response.json() or {}).get("access_token"):
                response.failure(f"sign in: HTTP {response.status_code}")
