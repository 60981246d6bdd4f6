# syntax=docker/dockerfile:1
# kube-persist image: one static binary (musl, rustls with aws-lc-rs, no OpenSSL, no libc at run
# time) on distroless/static, running as uid 65532. Build:
#   docker build -t REGISTRY/kube-persist:0.1.0 .
# then point deploy/base/kustomization.yaml at it (images: newName/newTag).
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 ... (the builder stage runs
# per platform; emulated builds are slow but need nothing else).

# At least Cargo.toml's rust-version (1.89); the toolchain the project is tested with.
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-alpine AS build
# aws-lc-sys (rustls' crypto provider) needs a C/C++ compiler; cmake and perl only if it falls
# back to its CMake build. Alpine's Rust targets musl and links statically by default.
RUN apk add --no-cache build-base cmake perl
WORKDIR /src
COPY . .
# Keep symbol names for panic backtraces, drop the rest of the debug info.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kube-persist \
 && install -D -m 0755 target/release/kube-persist /out/kube-persist
# Prove the binary is static (no NEEDED entries) and runs.
RUN ! readelf -d /out/kube-persist | grep -q NEEDED \
 && /out/kube-persist --version

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="kube-persist" \
      org.opencontainers.image.description="Admission webhook and NFS provisioner that keep monitoring data on persistent volumes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/kube-persist /usr/local/bin/kube-persist
# Numeric, so the kubelet can check runAsNonRoot (the Deployment sets the same ids).
USER 65532:65532
# 8443: webhook (HTTPS, POST /mutate); 8080: admin (HTTP, /livez /readyz /metrics).
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/kube-persist"]
CMD ["serve"]
