"""The ``easel`` command line and the embedded local stack behind ``make dev``."""
