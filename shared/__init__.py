"""The contract both sides of Easel import: models, settings, job store, storage, queues, errors.

Nothing here imports ``api``, ``worker``, Flask, Celery or torch.
"""
