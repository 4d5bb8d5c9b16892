package ipip

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/subnet"
)

// hasIPIP reports whether this kernel can make ipip devices.
func hasIPIP() bool {
	_, err := os.Stat("/sys/module/ipip")
	return err == nil
}

func newIPIP(t *testing.T) *testenv.Node {
	n := testenv.NewNetNS(t)
	idx := n.AddUplink(t, "eth0", 1500, "198.18.0.1/24")
	cfg, _, _ := subnet.ParseConfig([]byte(`{"Network":"100.96.0.0/12","Backend":{"Type":"ipip"}}`))
	b, err := New(backend.Env{Netlink: n.Netlink, Network: cfg, Log: logrus.NewEntry(logrus.New())})
	if err != nil {
		t.Fatal(err)
	}
	ext := &backend.ExternalInterface{
		Name: "eth0", Index: idx, MTU: 1500, LocalIP: netip.MustParseAddr("198.18.0.1"), PublicIP: netip.MustParseAddr("198.18.0.1"),
		Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.1/24")},
	}
	return testenv.NewNode(b, n, ext, &subnet.Lease{Subnet: netip.MustParsePrefix("100.96.1.0/24")})
}

// On a kernel without IPIP (like the CI machine's) Setup fails with one
// line that says what is missing and how to load it. Where the kernel has
// IPIP, e2e's TestIPIP (run in the VM by make test-vm) exercises the
// backend end to end.
func TestSetupWithoutKernelSupport(t *testing.T) {
	if hasIPIP() {
		t.Skip("this kernel has IPIP; the missing-module path cannot be shown here")
	}
	_, err := newIPIP(t).Setup()
	if !errors.Is(err, ErrNoKernelSupport) {
		t.Fatalf("Setup = %v, want ErrNoKernelSupport", err)
	}
	if !strings.Contains(err.Error(), "load it with: modprobe ipip") || strings.Contains(err.Error(), "\n") {
		t.Errorf("message: %q", err)
	}
}
