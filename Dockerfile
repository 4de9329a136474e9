# One image for every mbx worker; compose.yaml picks the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini mbx.yaml ./
COPY contracts ./contracts
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-cache-dir -e .
USER nobody
ENTRYPOINT ["mbx"]
