# weft's image: weftd, weftctl and the CNI plugin weft, the static binaries
# `make build` makes, on a base that has just the shell, cp and mv that the
# CNI install step of dist/kubernetes/weft.yaml runs. One image per platform,
# cross-compiled on the builder's own:
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg REVISION=$(git rev-parse HEAD) -t ghcr.io/weft-net/weft:TAG .
#
# dist/dockerfile_test.go parses this file with BuildKit's own parser and
# checks what the manifests rely on.

# What the binaries say with --version and the image's labels say.
ARG VERSION=dev
ARG REVISION

# The build runs on the builder's platform (BUILDPLATFORM) and compiles for
# the image's (TARGETOS, TARGETARCH): BuildKit sets all three. With
# CGO_ENABLED=0, which `make build` sets, Go needs no C toolchain and no
# emulation for that.
FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG TARGETOS TARGETARCH VERSION REVISION
ENV GOOS=$TARGETOS GOARCH=$TARGETARCH
RUN make build VERSION=$VERSION COMMIT=$REVISION

# busybox, statically linked against musl: /bin/sh, cp and mv for the install
# step and nothing else, about 1 MB, for every platform Go builds weft for.
# weftd runs no other program (it programs the kernel over netlink) and
# trusts only the CA files it is given (--etcd-cafile, the service account's
# ca.crt), so it needs nothing more. Not distroless's :debug image: its shell
# is /busybox/sh, and the manifests run /bin/sh.
FROM busybox:1.37.0-musl
ARG VERSION REVISION
# No org.opencontainers.image.licenses: the repository has no licence file
# yet; add the label with it.
LABEL org.opencontainers.image.title="weft" \
      org.opencontainers.image.description="weft node networking daemon (weftd), its CLI (weftctl) and CNI plugin (weft)" \
      org.opencontainers.image.source="https://github.com/weft-net/weft" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.revision="$REVISION"
COPY --from=build /src/bin/weftd /src/bin/weftctl /src/bin/weft /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/weftd"]
