// Package version holds the version of weft's binaries, set at build time
// with -ldflags "-X github.com/weft-net/weft/internal/version.Version=...".
package version

// Version is the release this binary was built from.
var Version = "dev"
