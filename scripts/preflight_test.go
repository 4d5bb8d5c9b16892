// Package scripts has no Go code, only tests: they run the scripts beside
// them as make does and check what a user reads.
package scripts

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// preflight runs ./preflight with args, with a PATH that holds only the
// programs fakes names (each a /bin/sh script with the given body) and with
// the sbin directories it falls back on replaced by sbin. It returns what
// the script printed and its exit status.
func preflight(t *testing.T, fakes map[string]string, sbin string, args ...string) (string, int) {
	t.Helper()
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir()
	for name, body := range fakes {
		if err := os.WriteFile(filepath.Join(path, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(bash, append([]string{"preflight"}, args...)...)
	cmd.Env = []string{"PATH=" + path, "PREFLIGHT_SBIN=" + sbin}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &exit):
		return string(out), exit.ExitCode()
	}
	t.Fatalf("running preflight: %v", err)
	return "", 0
}

// present fakes programs that exist and do nothing.
func present(names ...string) map[string]string {
	fakes := map[string]string{}
	for _, name := range names {
		fakes[name] = ""
	}
	return fakes
}

// asUser returns what preflight prints for label before the programs, and
// the prefix of its install command, for the user running the test.
func asUser(label string) (rootLine, sudo string) {
	if os.Geteuid() == 0 {
		return "", ""
	}
	why := map[string]string{
		"demo": "it builds network namespaces",
		"test": "the privileged tests build network namespaces; make unit needs no root",
	}[label]
	return "make " + label + " needs root (" + why + "): sudo make " + label + "\n", "sudo "
}

func check(t *testing.T, out string, code int, wantOut string, wantCode int) {
	t.Helper()
	t.Logf("what the user sees (exit status %d):\n%s", code, out)
	if out != wantOut || code != wantCode {
		t.Errorf("preflight printed\n%s(exit status %d), want\n%s(exit status %d)", out, code, wantOut, wantCode)
	}
}

// The case of issue #16: no ping, so every pair of pods used to FAIL.
func TestPreflightDemoWithoutPing(t *testing.T) {
	out, code := preflight(t, present("ip", "sysctl"), t.TempDir(), "demo")
	root, sudo := asUser("demo")
	check(t, out, code, root+
		"make demo needs ping (the reachability matrix pings every pod from every other): apt-get install iputils-ping\n"+
		"make demo: to install every missing package: "+sudo+"scripts/need iputils-ping\n", 1)
}

func TestPreflightDemoReady(t *testing.T) {
	out, code := preflight(t, present("ip", "sysctl", "ping", "bird", "birdc"), t.TempDir(), "demo", "bird")
	root, _ := asUser("demo")
	wantCode := 0
	if root != "" {
		wantCode = 1
	}
	check(t, out, code, root, wantCode)
}

// A program that is installed, in an sbin directory PATH lacks, is not
// sent to apt-get.
func TestPreflightProgramOutsidePath(t *testing.T) {
	sbin := t.TempDir()
	if err := os.WriteFile(filepath.Join(sbin, "sysctl"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, code := preflight(t, present("ip", "ping"), sbin, "demo")
	root, _ := asUser("demo")
	check(t, out, code, root+
		"make demo needs sysctl (forwarding in the sandbox's fabric): it is in "+sbin+", which PATH lacks (sudo and su - set a PATH with it)\n", 1)
}

func TestPreflightTestVM(t *testing.T) {
	fakes := present("cpio", "ip", "bridge", "tc", "nft", "ping", "apt-get")
	fakes["ldd"] = "exit 1"     // as for a static binary: "not a dynamic executable"
	fakes["apt-cache"] = "true" // no package lists: apt-get update was never run
	out, code := preflight(t, fakes, t.TempDir(), "test-vm")
	_, sudo := asUser("test-vm")
	want := "make test-vm needs qemu-system-x86_64 (the VM tests boot Debian's cloud kernel in QEMU): apt-get install qemu-system-x86\n"
	pkgs := "qemu-system-x86"
	// The script looks where e2e/vm/run.sh copies busybox from.
	if _, err := os.Stat("/usr/bin/busybox"); err != nil {
		want += "make test-vm needs a static /usr/bin/busybox (the VM's shell and tools): apt-get install busybox-static\n"
		pkgs += " busybox-static"
	}
	want += "make test-vm needs Debian's package lists (the VM's kernel, linux-image-cloud-amd64, is fetched with apt-get download): apt-get update\n" +
		"make test-vm: to install every missing package: " + sudo + "scripts/need " + pkgs + "\n"
	check(t, out, code, want, 1)
}

func TestPreflightWrongArguments(t *testing.T) {
	out, code := preflight(t, nil, t.TempDir(), "demo", "quagga")
	check(t, out, code, "make demo: ROUTER=quagga: the sandbox's routers are bird and frr\n", 2)
	out, code = preflight(t, nil, t.TempDir(), "bench")
	if code != 2 || !strings.HasPrefix(out, "usage: ") {
		t.Errorf("preflight bench: exit status %d, printed %q; want 2 and the usage", code, out)
	}
}
