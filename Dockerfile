# Switchyard: one image for every service (api, scheduler, worker, logger) and for
# migrations. The command picks the service; the default is the API.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --user-group switchyard

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml
# changes, not on every code edit (empty packages stand in for the code here).
COPY pyproject.toml ./
RUN mkdir shared services switchyard \
    && touch shared/__init__.py services/__init__.py switchyard/__init__.py \
    && pip install '.[server]' \
    && pip uninstall -y switchyard \
    && rm -rf build ./*.egg-info shared services switchyard

# The project itself (non-editable, no dev extras). The sources stay in /app too:
# alembic.ini finds the migrations at /app/shared/migrations.
COPY alembic.ini ./
COPY shared/ shared/
COPY services/ services/
COPY switchyard/ switchyard/
RUN pip install --no-deps . && rm -rf build ./*.egg-info

USER switchyard

EXPOSE 8000

CMD ["python", "-m", "services.api"]
