package subnet

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEnvFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "subnet.env")
	in := &Env{
		Network:     netip.MustParsePrefix("100.96.0.0/12"),
		Subnet:      GatewayPrefix(netip.MustParsePrefix("100.96.3.0/24")),
		IPv6Network: netip.MustParsePrefix("fd96::/48"),
		IPv6Subnet:  GatewayPrefix(netip.MustParsePrefix("fd96:0:0:3::/64")),
		MTU:         1450,
		IPMasq:      true,
	}
	if err := WriteEnvFile(path, in); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	want := "FLANNEL_NETWORK=100.96.0.0/12\nFLANNEL_SUBNET=100.96.3.1/24\n" +
		"FLANNEL_IPV6_NETWORK=fd96::/48\nFLANNEL_IPV6_SUBNET=fd96:0:0:3::1/64\n" +
		"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	if string(data) != want {
		t.Errorf("file:\n%s\nwant:\n%s", data, want)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode = %v, want 0640", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temp files left behind: %v", entries)
	}
	out, err := ReadEnvFile(path)
	if err != nil || *out != *in {
		t.Errorf("read back %+v, %v; want %+v", out, err, in)
	}
}

func TestParseEnvFlannelFile(t *testing.T) {
	// As flanneld writes it.
	e, err := ParseEnv([]byte("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Subnet.Masked() != netip.MustParsePrefix("10.244.1.0/24") || e.MTU != 1450 || !e.IPMasq {
		t.Errorf("got %+v", e)
	}
	if _, err := ParseEnv([]byte("FLANNEL_SUBNET=nope\n")); err == nil {
		t.Error("accepted a bad FLANNEL_SUBNET")
	}
}

// A subnet file path that is a directory gets a message saying so, not
// rename's "file exists".
func TestWriteEnvFileToADirectorySaysSo(t *testing.T) {
	dir := t.TempDir()
	err := WriteEnvFile(dir, &Env{MTU: 1450})
	if err == nil || !strings.Contains(err.Error(), dir+": it is a directory") {
		t.Errorf("got %v", err)
	}
}
