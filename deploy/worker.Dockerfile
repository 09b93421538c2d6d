# The GPU worker image: CUDA torch, diffusers, Celery. Choose the class at run time:
#   docker run --gpus 1 easel-worker worker --gpu h100
# torch as the Makefile pins it (pyproject.toml's floor is 2.10: torch.load's CVEs).
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker worker
COPY shared shared
COPY easel easel
RUN pip install --no-cache-dir '.[worker]'
# Non-root, with a fixed uid that Kubernetes pods name in runAsUser (deploy/k8s/worker-*.yaml).
# It owns /models, where weights download (HF_HOME=/models/hf): a new volume mounted there
# starts with this owner. Its home holds torch.compile's and Triton's caches.
RUN groupadd --gid 10001 easel \
    && useradd --uid 10001 --gid easel --create-home --home-dir /home/easel easel \
    && mkdir -p /models \
    && chown 10001:10001 /models
USER 10001:10001
ENTRYPOINT ["easel"]
CMD ["worker", "--gpu", "a10g"]
