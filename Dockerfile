# The image the example workflows run in (sandbox.build in workflows/*.yaml): a POSIX shell,
# Python 3 and numpy. BASE defaults to the public Python image; where no registry can be
# reached, scripts/docker-setup makes a local stand-in under that name.
ARG BASE=python:3.11-slim
FROM ${BASE}
RUN python3 -c "import numpy" 2>/dev/null || pip install --no-cache-dir "numpy>=1.24"
WORKDIR /workspace
