# The service's image, for the KubeRay RayService (deploy/kuberay/rayservice.yaml) and for
# cluster.yaml's docker section: Ray's own image at the pinned Ray and Python, the project
# installed with the pinned versions of deploy/constraints.txt. No detector weights inside: the
# model directory (manifest.json + checkpoints) is mounted at analysis.inference.model_dir.
# KubeRay and the cluster launcher start Ray themselves: no ENTRYPOINT or CMD here.
#
#   docker build -t ghcr.io/dfd-project/dfd:0.1.0 .                                 # CUDA
#   docker build --build-arg VARIANT=cpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu \
#     -t ghcr.io/dfd-project/dfd:0.1.0-cpu .                                         # CPU only
ARG RAY_VERSION=2.60.0
ARG PYTHON=py311
# cpu, or the CUDA flavour of Ray's images that matches the nodes' driver.
ARG VARIANT=cu128
FROM rayproject/ray:${RAY_VERSION}-${PYTHON}-${VARIANT}

# torch's wheel index for the variant (CUDA 12.8 wheels by default; .../whl/cpu for cpu).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

# yt-dlp merges separate audio and video streams with ffmpeg.
USER root
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*
USER ray

WORKDIR /home/ray/dfd
# Dependencies first (a layer that changes only with the pins), then the code.
COPY --chown=ray:users deploy/constraints.txt deploy/constraints.txt
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users pipeline pipeline
COPY --chown=ray:users serve serve
COPY --chown=ray:users batch batch
COPY --chown=ray:users evaluation evaluation
COPY --chown=ray:users bench bench
COPY --chown=ray:users dfd dfd
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" \
        -c deploy/constraints.txt . \
    && python -c "import ray, serve.app; assert ray.__version__ == '${RAY_VERSION}'"
