# The long-work worker of the reference deployment (the example actors): drains the
# long-work lane (what Lambda invocations hand over) and ends once it has stayed empty for a
# minute. `actor-system init` writes the same for a project of one's own.
#   docker build --platform linux/amd64 -t <LongWorkRepositoryUri>:latest .
#   docker push <LongWorkRepositoryUri>:latest
FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY actor_system/ actor_system/
COPY adapters/ adapters/
RUN pip install '.[aws]'
WORKDIR /app
COPY examples/ examples/
COPY deploy/drain.py deploy/
RUN useradd --system --uid 10001 worker
USER worker
ENV ACTOR_SYSTEM_APP=deploy.drain:ACTORS
HEALTHCHECK --interval=30s --timeout=10s CMD ["actor-system", "worker", "--check"]
CMD ["actor-system", "worker", "--lane", "long"]
