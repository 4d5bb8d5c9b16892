// Package testenv holds what weft's tests need from the machine they run on:
// root, the module's own binaries, and the rule that a test which cannot run
// fails under CI instead of skipping.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true), where a test that
// cannot run must fail.
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable skips t, or fails it under CI, because what it needs is missing.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("cannot run under CI: %s", msg)
	}
	t.Skip(msg)
}

// RequireRoot skips t (fails it under CI) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root for network namespaces")
	}
}

var (
	binMu    sync.Mutex
	binPaths = map[string]string{}
)

// Binary returns the path of one of the module's commands (e.g. "weft-etcd"),
// built on first use. $WEFT_BIN_DIR, set by the Makefile, points at binaries
// already built; otherwise the command is built into a shared directory
// under the system temp dir, under a file lock so that test processes
// running in parallel do not race.
func Binary(t testing.TB, name string) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if p, ok := binPaths[name]; ok {
		return p
	}
	if dir := os.Getenv("WEFT_BIN_DIR"); dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("WEFT_BIN_DIR has no %s: %v", name, err)
		}
		binPaths[name] = p
		return p
	}
	p := build(t, "weft-test-bin", name, "./cmd/"+name)
	binPaths[name] = p
	return p
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the weft module")
	}
	return filepath.Dir(gomod), nil
}

// ToolBinary builds a command from a package of a dependency listed as a
// tool in go.mod (e.g. CNI's portmap plugin) into the shared test
// directory and returns its path.
func ToolBinary(t testing.TB, pkg string) string {
	t.Helper()
	binMu.Lock()
	defer binMu.Unlock()
	if p, ok := binPaths[pkg]; ok {
		return p
	}
	p := build(t, "weft-test-tools", filepath.Base(pkg), pkg)
	binPaths[pkg] = p
	return p
}

// build runs go build for pkg into os.TempDir()/dir/name, holding a file
// lock there so that test processes running in parallel do not race.
// The caller holds binMu.
func build(t testing.TB, dir, name, pkg string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatalf("finding the module root: %v", err)
	}
	dir = filepath.Join(os.TempDir(), dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", p, pkg)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", pkg, err, out)
	}
	return p
}
