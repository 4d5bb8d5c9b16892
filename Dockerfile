# weft's image: static binaries built by `make build`, on a small base that
# has a shell for the CNI install step.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN make build

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/bin/ /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/weftd"]
