# The image of every service of compose.yaml that runs our code (web, migrate, worker).
# Not built here: the development machines have no Docker engine (tests/test_compose.py checks
# what can be checked without one).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DATA_DIR=/data STATIC_ROOT=/app/staticfiles
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# Compiled once here: PYTHONDONTWRITEBYTECODE would have every command compile its modules at start-up.
RUN python -m compileall -q /app
RUN DEBUG=1 python manage.py collectstatic --noinput
RUN useradd --system --home-dir /data --no-create-home uploader && mkdir -p /data && chown uploader /data
USER uploader
EXPOSE 8000
