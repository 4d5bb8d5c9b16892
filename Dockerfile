# weft's image: the static binaries `make build` makes, on a small base with
# a shell for the CNI install step (dist/kubernetes/weft.yaml).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN make build

FROM debian:bookworm-slim
COPY --from=build /src/bin/weftd /src/bin/weftctl /src/bin/weft /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/weftd"]
