# Softprobe capture gateway: mitmdump with the Softprobe addon.
# Build: docker build -t ghcr.io/softprobe/softprobe-gateway:0.1.0 .
# Runs as uid 10001 with a read-only root filesystem: mount mitmproxy's confdir
# (/var/lib/mitmproxy: an emptyDir, or the CA Secret for explicit-proxy mode) and the config
# (/etc/softprobe/gateway.yaml). The public key comes from env SOFTPROBE_PUBLIC_KEY.

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY addon/softprobe_gateway addon/softprobe_gateway
# A pip-less venv: the build stage's pip installs into it, so no installer ships in the image.
RUN python -m venv --without-pip /opt/softprobe \
    && pip --python /opt/softprobe/bin/python install --no-cache-dir --compile .

# The transparent-capture init container (`docker build --target redirect -t
# ghcr.io/softprobe/softprobe-redirect:0.1.0 .`): the same base plus iptables, nothing else; it
# runs k8s/components/transparent/redirect.sh, mounted from a ConfigMap.
FROM python:3.11.11-slim-bookworm AS redirect
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables=1.8.9-2 \
    && rm -rf /var/lib/apt/lists/*

FROM python:3.11.11-slim-bookworm
# MALLOC_ARENA_MAX: glibc reads it at exec (softprobe_gateway/proxy/memory.py says why).
ENV PATH=/opt/softprobe/bin:$PATH \
    MALLOC_ARENA_MAX=2 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SOFTPROBE_CONFIG=/etc/softprobe/gateway.yaml
RUN groupadd --gid 10001 softprobe \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin softprobe \
    && install -d -o 10001 -g 10001 /var/lib/mitmproxy /etc/softprobe
COPY --from=build /opt/softprobe /opt/softprobe
COPY addon/softprobe_addon.py /app/addon/softprobe_addon.py
WORKDIR /app
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["mitmdump", "-s", "/app/addon/softprobe_addon.py"]
# Mesh egress by default (see docs/deployment.md, "Routing modes"); Kubernetes passes its own args per mode.
CMD ["--mode", "regular@8080", "--set", "block_global=false", "--set", "onboarding=false", \
     "--set", "connection_strategy=lazy", "--set", "flow_detail=0", \
     "--set", "confdir=/var/lib/mitmproxy"]
