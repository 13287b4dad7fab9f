# The organizers' sandbox image: the harness's worker, with the pinned PyTorch, and nothing else.
#
#   docker build -t unlearning-harness:latest .                      # CUDA-enabled torch from PyPI
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#                -t unlearning-harness:cpu .                          # smaller, CPU only
#
# The host runs it through the `docker` sandbox backend (harness/sandbox/backends.py), which adds
# --network none, a read-only root, memory/pid limits and its cores (cpuset), host folders for
# /tmp, /dev/shm and /kaggle/* that the host empties between runs, the inbox read-only, the unit's
# GPU when asked; the warm parent runs as root with four capabilities and every run as nobody:
#   ENTRYPOINT python -m harness.sandbox.worker  +  CMD /sandbox/inbox /sandbox/outbox
# Without a registry, scripts/docker_engine.sh builds a minimal image instead (see README).
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first: the heaviest layer, rebuilt only when the pin changes.
RUN pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
        torch==2.14.1 torchvision==0.29.1

WORKDIR /opt/unlearning-harness
COPY pyproject.toml README.md ./
COPY harness ./harness
COPY configs ./configs
COPY baselines ./baselines
RUN pip install . \
    && python -c "import torch, torchvision, harness.sandbox.worker, harness.learn.models, harness.data.loaders" \
    && mkdir -p /sandbox/inbox /sandbox/outbox /sandbox/control /sandbox/parent-tmp /kaggle/tmp /kaggle/working

WORKDIR /kaggle/working
ENTRYPOINT ["python", "-m", "harness.sandbox.worker"]
CMD ["/sandbox/inbox", "/sandbox/outbox"]
