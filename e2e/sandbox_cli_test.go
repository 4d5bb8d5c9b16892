package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/internal/testenv"
)

// TestSandboxCLI runs what `make demo` runs: weftctl sandbox up, matrix,
// status and down, and checks that down leaves nothing behind.
func TestSandboxCLI(t *testing.T) {
	testenv.RequireRoot(t)
	for _, b := range []string{"weftd", "weft-etcd", "weft"} {
		testenv.Binary(t, b)
	}
	weftctl := testenv.Binary(t, "weftctl")
	dir := filepath.Join(t.TempDir(), "sandbox")
	id := make([]byte, 3)
	rand.Read(id)
	name := "ws" + hex.EncodeToString(id)
	t.Cleanup(func() { sandbox.DeleteNamespaces(name) })
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, weftctl, args...).CombinedOutput()
		return string(out), err
	}

	out, err := run("sandbox", "up", "--dir", dir, "--name", name, "--nodes", "3", "--backend", "host-gw")
	if err != nil {
		t.Fatalf("sandbox up: %v\n%s", err, out)
	}
	defer run("sandbox", "down", "--dir", dir)
	// Three nodes and etcd.
	if !strings.Contains(out, "host-gw") || strings.Count(out, "running (pid") != 4 {
		t.Errorf("sandbox up output:\n%s", out)
	}
	if out, err := run("sandbox", "up", "--dir", dir); err == nil || !strings.Contains(out, "already up") {
		t.Errorf("second sandbox up: %v\n%s", err, out)
	}
	out, err = run("sandbox", "matrix", "--dir", dir, "--count", "1")
	if err != nil || !strings.Contains(out, "every pod reaches every other pod") || strings.Contains(out, "FAIL") {
		t.Errorf("sandbox matrix: %v\n%s", err, out)
	}
	if out, err := run("sandbox", "status", "--dir", dir); err != nil || strings.Count(out, "running (pid") != 4 {
		t.Errorf("sandbox status: %v\n%s", err, out)
	}
	if out, err := run("sandbox", "down", "--dir", dir); err != nil || !strings.Contains(out, "removed") {
		t.Errorf("sandbox down: %v\n%s", err, out)
	}
	if ns, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(ns), name) {
		t.Errorf("namespaces left after down:\n%s", ns)
	}
	if out, err := run("sandbox", "status", "--dir", dir); err == nil || !strings.Contains(out, "no sandbox in") {
		t.Errorf("status after down: %v\n%s", err, out)
	}
}
