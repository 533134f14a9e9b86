# One image for every Python service of the lab (target API, sidecar, Locust master and workers);
# docker-compose.yml chooses the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# The project and its dependencies, pinned to the versions CI ran (constraints.txt).
COPY pyproject.toml constraints.txt README.md ./
COPY target_app/ target_app/
COPY locust_tests/ locust_tests/
COPY monitoring/ monitoring/
COPY loadlab/ loadlab/
RUN pip install -c constraints.txt '.[lab]'

# Not root: none of the services needs it. /data holds the target's SQLite file.
RUN useradd --create-home --uid 10001 lab && mkdir -p /data && chown lab /data
USER lab

EXPOSE 5000 9101 8089 9646 9256
CMD ["python", "-m", "target_app", "--host", "0.0.0.0", "--port", "5000"]
