# The dbops service's image (docker-compose.yml, profile "ops"): the backend image (alembic,
# the models, the agent's dependencies) plus PostgreSQL client tools and dbops's host-side
# libraries. This checkout's dbops/ is mounted over /opt/dbops/dbops at run time.
#   docker compose --profile ops build dbops
ARG BACKEND_IMAGE=dbops-backend:latest
FROM ${BACKEND_IMAGE}
USER root
# pg_dump must be at least the server's major version: match postgresql-client-NN to it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client \
 && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "invoke>=2.2" "python-dotenv>=1.0" "tenacity>=8.2" \
      "APScheduler>=3.10,<4" "prometheus-client>=0.19" "rich>=13"
COPY dbops /opt/dbops/dbops
COPY tasks.py pyproject.toml /opt/dbops/
ENV PYTHONPATH=/opt/dbops
USER app
WORKDIR /app
CMD ["python", "-m", "dbops.serve", "--project-dir", "/opt/dbops"]
