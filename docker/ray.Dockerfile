# syntax=docker/dockerfile:1
# The Ray Serve stages on GPU (Ingress, VisionEncoder, LlmDecoder, TextEmbedder): the image of
# the RayService's head and GPU worker pods. KubeRay starts Ray in it (`ray start ...`), and the
# Serve config imports skyeye.services.inference:app_from_env.
#
#   docker build -f docker/ray.Dockerfile -t skyeye-ray:0.1.0 .
#
# Ray's own GPU image is the base. RAY_VERSION must equal the ray pin in constraints.txt
# (ray[serve]==2.60.0): the CPU services join this cluster with Ray Client, which refuses a
# different Ray or Python version. CUDA picks both the base tag and the PyTorch wheel index, so
# torch (2.13.0, as in constraints.txt) is built for the CUDA the image carries.

ARG RAY_VERSION=2.60.0
ARG CUDA=cu128

# --- the project's wheel (no compiler needed; setuptools only) ---
FROM rayproject/ray:${RAY_VERSION}-py311-${CUDA} AS build
WORKDIR /home/ray/src
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 shared ./shared
COPY --chown=1000:100 services ./services
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /home/ray/wheels .

# --- the runtime: Ray's image, CUDA torch, the project with its pins ---
FROM rayproject/ray:${RAY_VERSION}-py311-${CUDA}
ARG CUDA
ARG VERSION=0.1.0
ARG REVISION=unknown
# the repository's URL, as CI knows it (docker build --build-arg SOURCE=...)
ARG SOURCE=""
LABEL org.opencontainers.image.title="skyeye-ray" \
      org.opencontainers.image.description="SkyEye Stream Ray Serve stages (VisionEncoder, LlmDecoder) on GPU" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# CUDA torch from PyTorch's index for this CUDA; then the project, whose constraints keep the
# image's ray and this torch (2.13.0+${CUDA} satisfies ==2.13.0)
RUN pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${CUDA}" torch==2.13.0
COPY --chown=1000:100 constraints.txt /home/ray/constraints.txt
COPY --from=build /home/ray/wheels /home/ray/wheels
RUN pip install --no-cache-dir -c /home/ray/constraints.txt /home/ray/wheels/*.whl
ENV PYTHONUNBUFFERED=1 \
    SKYEYE_HOME=/tmp/skyeye \
    SKYEYE_DEVICE=cuda \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1
# Ray's image user (uid 1000, gid 100); the chart runs it with a read-only root filesystem and
# /tmp and /dev/shm mounted
USER 1000
