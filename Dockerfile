# hosepipe in a container: a multi-stage build (docs/operations.md, "Containers").
#   docker build -t hosepipe --build-arg HOSEPIPE_BUILD_COMMIT=$(git rev-parse --short=12 HEAD) .
#   docker run -p 4573:4573 -v hosepipe-data:/var/lib/hosepipe hosepipe
# The default config is config/container.toml; mount your own over /etc/hosepipe/hosepipe.toml.
# Build stage: the toolchain rust-toolchain.toml names, and the WebAssembly target for the
# transform components.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY . .
ARG HOSEPIPE_BUILD_COMMIT=unknown
ENV HOSEPIPE_BUILD_COMMIT=${HOSEPIPE_BUILD_COMMIT}
RUN cargo build --release --locked --bin hosepipe \
 && scripts/build-transforms /out/transforms \
 && rm /out/transforms/hostile-guest.wasm \
 && install -D target/release/hosepipe /out/hosepipe \
 && /out/hosepipe man --dir /out/man/man1 \
 && /out/hosepipe completions bash > /out/hosepipe.bash

# Run stage: the binary, its man pages and the transform components; CA certificates for
# HTTPS destinations; an unprivileged user owning the state directory.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/hosepipe --shell /usr/sbin/nologin hosepipe \
 && install -d -o hosepipe -g hosepipe -m 0700 /var/lib/hosepipe /etc/hosepipe
COPY --from=build /out/hosepipe /usr/local/bin/hosepipe
COPY --from=build /out/man/ /usr/local/share/man/
COPY --from=build /out/hosepipe.bash /etc/bash_completion.d/hosepipe
COPY --from=build /out/transforms/ /usr/local/lib/hosepipe/transforms/
COPY config/ /usr/local/share/hosepipe/config/
COPY config/container.toml /etc/hosepipe/hosepipe.toml
USER hosepipe
ENV HOSEPIPE_LOG_FORMAT=json
VOLUME /var/lib/hosepipe
EXPOSE 4573
ENTRYPOINT ["/usr/local/bin/hosepipe"]
CMD ["serve", "--config", "/etc/hosepipe/hosepipe.toml"]
