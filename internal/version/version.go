// Package version holds the version of weft's binaries: the release and
// commit, set at build time with -ldflags "-X
// github.com/weft-net/weft/internal/version.Version=... -X ...Commit=..."
// (the Makefile does), else the commit the toolchain stamps (when built
// without -buildvcs=false); and the Go version.
package version

import (
	"runtime"
	"runtime/debug"
)

// Version is the release this binary was built from.
var Version = "dev"

// Commit is the commit it was built from, when the build says.
var Commit = ""

// Info is what a binary says about its build.
type Info struct {
	Version   string
	Commit    string // the VCS revision, "unknown" when nobody said
	GoVersion string
}

// Get returns this binary's build information.
func Get() Info {
	info := Info{Version: Version, Commit: Commit, GoVersion: runtime.Version()}
	if info.Commit != "" {
		return info
	}
	info.Commit = "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				info.Commit = s.Value
			}
		}
	}
	return info
}

// String is the one line --version prints, e.g.
// "3bc8a6f-dirty (commit 3bc8a6f0…, go1.26.8)".
func (i Info) String() string {
	return i.Version + " (commit " + i.Commit + ", " + i.GoVersion + ")"
}
