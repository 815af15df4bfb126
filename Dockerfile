# The one Berth image: the control plane, the gateway, the agent, and MLServer with the runtimes the default
# ServerConfig's capabilities name (sklearn, xgboost, mlflow, lightgbm).  Every component runs from it with
# its own command (`berth control`, `berth gateway`, `berth agent`, `mlserver start`); see docs/kubernetes.md.
#   docker build -t berth:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/berth \
 && /opt/berth/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/berth/bin/pip install --no-cache-dir '.[serve,kube]'

FROM python:3.11-slim
COPY --from=build /opt/berth /opt/berth
ENV PATH=/opt/berth/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The pods run as this user (runAsNonRoot, uid 1000), with read-only root filesystems where they can.
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin berth
USER 1000
WORKDIR /home/berth
EXPOSE 9000 9001 9004 8080 8081
ENTRYPOINT []
CMD ["berth", "--help"]
