# One image for the hook server (etcdstorage-hook) and the cert-rotation job (etcdstorage-cert-rotation): the
# `etcdstorage` package of pyproject.toml, installed with the pinned dependencies of requirements.txt.
# Pinned base, everything installed in a build stage, non-root at run time, no shell tools added.
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
USER 65532:65532
EXPOSE 8080
CMD ["etcdstorage-hook", "--host", "::", "--port", "8080"]
