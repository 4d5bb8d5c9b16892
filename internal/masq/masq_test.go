package masq

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/weft-net/weft/internal/testenv"
)

func TestApplyReplacesTheTable(t *testing.T) {
	n := testenv.NewNetNS(t)
	conn, err := nftables.New(nftables.WithNetNSFd(int(n.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	nft := func() string {
		out, err := exec.Command("ip", "netns", "exec", n.Name, "nft", "list", "table", "inet", "weft").CombinedOutput()
		if err != nil {
			t.Fatalf("nft list: %v\n%s", err, out)
		}
		return string(out)
	}
	rules := Rules{Networks: []netip.Prefix{netip.MustParsePrefix("100.96.0.0/12"), netip.MustParsePrefix("fd96::/48")}, Masquerade: true}
	for range 2 { // idempotent
		if err := Apply(conn, rules); err != nil {
			t.Fatal(err)
		}
	}
	out := nft()
	for _, want := range []string{
		"ip saddr 100.96.0.0/12 accept",
		"ip daddr 100.96.0.0/12 accept",
		"ip saddr 100.96.0.0/12 ip daddr 100.96.0.0/12 return",
		"ip saddr 100.96.0.0/12 ip daddr != 224.0.0.0/4 masquerade fully-random",
		"ip6 saddr fd96::/48 ip6 daddr != ff00::/8 masquerade fully-random",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "masquerade") != 2 {
		t.Errorf("rules duplicated:\n%s", out)
	}

	rules.Masquerade = false
	if err := Apply(conn, rules); err != nil {
		t.Fatal(err)
	}
	if out := nft(); strings.Contains(out, "masquerade") || !strings.Contains(out, "accept") {
		t.Errorf("after disabling masquerade:\n%s", out)
	}
	if err := Remove(conn); err != nil {
		t.Fatal(err)
	}
	if err := Remove(conn); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}
