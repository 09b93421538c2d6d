# The GPU worker image: CUDA torch, diffusers, Celery. Choose the class at run time:
#   docker run --gpus 1 easel-worker worker --gpu h100
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker worker
COPY shared shared
COPY easel easel
RUN pip install --no-cache-dir '.[worker]'
ENTRYPOINT ["easel"]
CMD ["worker", "--gpu", "a10g"]
