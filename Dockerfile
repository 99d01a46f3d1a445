# One image for the hook server (python -m hooks) and the cert-rotation job (python -m hooks.job).
# Pinned base, dependencies installed in a build stage, non-root at run time, no shell tools added.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /build
COPY requirements.txt .
RUN pip install --no-cache-dir --disable-pip-version-check --prefix=/install -r requirements.txt

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
WORKDIR /app
COPY hooks/ hooks/
USER 65532:65532
EXPOSE 8080
CMD ["python", "-m", "hooks", "--host", "0.0.0.0", "--port", "8080"]
