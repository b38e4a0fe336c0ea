# The Airflow image docker-compose.yml runs: the official Airflow image plus rowfill and its
# dependencies, installed with the same pins as `make install` (constraints.txt).
#
#   docker compose build          (or: docker build -t rowfill-airflow:3.3.2 .)
#
# constraints.txt pins apache-airflow==3.3.2, the version the base image already ships, so pip
# keeps the image's Airflow instead of upgrading or downgrading it. Keep the tag below, the pin in
# constraints.txt and the default in docker-compose.yml in step (tests/test_compose.py checks).
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_BASE_IMAGE}

# Install as the image's own `airflow` user, as the official image expects (never as root).
USER airflow
WORKDIR /opt/airflow

# The same layout as the repository, under AIRFLOW_HOME: docker-compose.yml bind-mounts ./include
# over /opt/airflow/include for development, and the image still works without the mounts.
COPY --chown=airflow:0 pyproject.toml constraints.txt README.md ./
COPY --chown=airflow:0 include/ include/

# /opt/airflow/auth holds the simple auth manager's passwords file (a named volume in compose;
# a new volume takes this directory's owner). Group 0 writable for any AIRFLOW_UID, like the image.
RUN pip install --no-cache-dir -c constraints.txt . \
    && rm -rf build include/*.egg-info \
    && mkdir -p /opt/airflow/auth \
    && chmod -R g+rwX /opt/airflow/auth \
    && python -c "import rowfill.spec.spec, rowfill.airflow.pools"
