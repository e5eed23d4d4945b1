# komugate: multi-stage build, minimal non-root runtime image.
#   docker build -t komugate:0.1.0 .
# Build stage: the Rust toolchain, release build of the gateway only.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p komugate \
 && install -D -m 0755 target/release/komugate /out/komugate \
 && mkdir -p /out/data

# Runtime: distroless (glibc, CA certificates, no shell, no package manager),
# user 65532 (nonroot). Config, policy and keys come from ConfigMaps/Secrets.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/komugate /usr/local/bin/komugate
COPY --from=build --chown=65532:65532 /out/data /var/lib/komugate
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/komugate"]
CMD ["serve", "--config", "/etc/komugate/config/komugate.toml", "--data", "/var/lib/komugate"]
