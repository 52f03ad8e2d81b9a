# Image for the aiaas services (used by compose.yaml). CPU wheels; add the `gpu` extra on GPU hosts.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip install --no-cache-dir '.[training]'
ENV AIAAS_HOME=/var/lib/aiaas
CMD ["aiaas", "serve", "vision"]
