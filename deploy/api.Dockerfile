# The API image: Flask under gunicorn, no torch.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY shared shared
COPY easel easel
RUN pip install --no-cache-dir '.[api]'
# nobody:nogroup, by number so Kubernetes can check runAsNonRoot (deploy/k8s/api.yaml).
USER 65534:65534
EXPOSE 8000
ENTRYPOINT ["easel"]
CMD ["api", "--bind", "0.0.0.0:8000"]
