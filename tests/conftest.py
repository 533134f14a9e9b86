from tests.helpers import spawn  # noqa: F401  (fixture shared by every test package)
