# The service's own image. Nothing can be pulled from the internet, so it starts FROM the Debian
# base that builders/build.sh makes with debootstrap, and takes the release binary built on this
# (same-release) machine:
#   cargo build --release && docker build -t builder:latest .
#   docker run --rm -v /var/run/docker.sock:/var/run/docker.sock builder:latest --help
FROM builder/debian:latest
# busybox-static: the shell that holds steps started ahead of their turn (src/adapters/runtime/docker/gate.rs); libssl3:
# git2 fetches over https with OpenSSL.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends busybox-static libssl3 ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY target/release/builder /usr/local/bin/builder
ENTRYPOINT ["/usr/local/bin/builder"]
CMD ["--help"]
