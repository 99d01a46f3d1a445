# One image for the hook server (etcdstorage-hook) and the cert-rotation job (etcdstorage-cert-rotation): the
# `etcdstorage` package of pyproject.toml, installed with the pinned dependencies of requirements.txt, plus the tenant
# proxy's binary (the job runs its `purge-prefix` for an EtcdStorage deleted with deletionPolicy Delete).
# Pinned bases, everything built in build stages, non-root at run time, no shell tools added.
FROM golang:1.26.8-bookworm AS proxy
WORKDIR /src
COPY tenant-proxy/go.mod tenant-proxy/go.sum ./
RUN go mod download
COPY tenant-proxy/ .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/tenant-proxy .

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /build
COPY requirements.txt .
RUN pip install --no-cache-dir --disable-pip-version-check --prefix=/install -r requirements.txt
COPY pyproject.toml README.md ./
COPY hooks/ hooks/
COPY etcdstorage/ etcdstorage/
COPY certrotation/ certrotation/
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps --prefix=/install .

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
COPY --from=proxy /out/tenant-proxy /usr/local/bin/tenant-proxy
USER 65532:65532
EXPOSE 8080
CMD ["etcdstorage-hook", "--host", "::", "--port", "8080"]
