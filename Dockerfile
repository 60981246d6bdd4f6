# syntax=docker/dockerfile:1
# kube-persist image: the release binary (glibc, rustls with aws-lc-rs, no OpenSSL) on
# distroless/cc, running as uid 65532. It is the same build the load benchmark measures
# (benches/load/): glibc's allocator, no musl and no allocator swapped in for the image. Build:
#   docker build -t REGISTRY/kube-persist:0.1.0 .
# then point deploy/base/kustomization.yaml at it (images: newName/newTag).
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 ... (the builder stage runs
# per platform; emulated builds are slow but need nothing else).

# The toolchain the project is tested with (CI also checks Cargo.toml's rust-version).
ARG RUST_VERSION=1.95

# Debian 12 in both stages: the binary needs glibc 2.34 or later, and distroless/cc-debian12
# has 2.36 with libgcc_s.
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# aws-lc-sys (rustls' crypto provider) needs a C/C++ compiler (in the image) and cmake only if it
# falls back to its CMake build.
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Keep symbol names for panic backtraces, drop the rest of the debug info.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kube-persist \
 && install -D -m 0755 target/release/kube-persist /out/kube-persist
# Prove the binary needs nothing beyond what distroless/cc has, and runs.
RUN readelf -d /out/kube-persist | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' \
      | grep -vxE 'libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1' \
      | { ! grep .; } \
 && /out/kube-persist --version

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="kube-persist" \
      org.opencontainers.image.description="Admission webhook and NFS provisioner that keep monitoring data on persistent volumes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/kube-persist /usr/local/bin/kube-persist
# Numeric, so the kubelet can check runAsNonRoot (the Deployment sets the same ids).
USER 65532:65532
# 8443: webhook (HTTPS, POST /mutate); 8080: admin (HTTP, /livez /readyz /metrics).
EXPOSE 8443 8080
# No CMD: with no arguments the binary runs the provisioner when NFS_SERVER or NFS_PATH is set
# (nfs-subdir-external-provisioner's Deployment sets both and passes no arguments), else `serve`.
ENTRYPOINT ["/usr/local/bin/kube-persist"]
