package netmon

import (
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/testenv"
)

func TestChooseInterface(t *testing.T) {
	n := testenv.NewNetNS(t)
	n.AddUplink(t, "eth0", 1500, "198.18.0.1/24")
	n.AddUplink(t, "eth1", 9000, "198.19.0.1/24")
	if out, err := exec.Command("ip", "-n", n.Name, "route", "add", "default", "via", "198.19.0.254").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	tests := []struct {
		name    string
		cfg     Selection
		want    string
		why     string
		public  string
		wantErr string
	}{
		{name: "default route", want: "eth1", why: "it has the default route", public: "198.19.0.1"},
		{name: "by name", cfg: Selection{Ifaces: []string{"eth0"}}, want: "eth0", why: "--iface eth0", public: "198.18.0.1"},
		{name: "by address", cfg: Selection{Ifaces: []string{"198.18.0.1"}}, want: "eth0", why: "--iface 198.18.0.1 is its address"},
		{name: "first that exists", cfg: Selection{Ifaces: []string{"bond0", "eth0"}}, want: "eth0"},
		{name: "regex on name", cfg: Selection{IfaceRegex: []string{"^eth0$"}}, want: "eth0", why: `its name matches --iface-regex "^eth0$"`},
		{name: "regex on address", cfg: Selection{IfaceRegex: []string{`^198\.18\.`}}, want: "eth0", why: "its address 198.18.0.1 matches"},
		{name: "can reach", cfg: Selection{CanReach: netip.MustParseAddr("198.18.0.77")}, want: "eth0", why: "it has the route to --iface-can-reach 198.18.0.77"},
		{name: "public ip override", cfg: Selection{Ifaces: []string{"eth0"}, PublicIP: netip.MustParseAddr("203.0.113.7")}, want: "eth0", public: "203.0.113.7"},
		{name: "no such interface", cfg: Selection{Ifaces: []string{"bond0"}}, wantErr: "none of --iface [bond0] is an interface name or address"},
		{name: "regex matches nothing", cfg: Selection{IfaceRegex: []string{"^wlan"}}, wantErr: "no interface name or address matches --iface-regex [^wlan]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ext, why, err := Choose(n.Netlink, &tt.cfg, false)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ext.Name != tt.want {
				t.Errorf("chose %s, want %s", ext.Name, tt.want)
			}
			if tt.why != "" && !strings.Contains(why, tt.why) {
				t.Errorf("why = %q, want %q", why, tt.why)
			}
			if tt.public != "" && ext.PublicIP.String() != tt.public {
				t.Errorf("public IP = %s, want %s", ext.PublicIP, tt.public)
			}
			if tt.want == "eth1" && ext.MTU != 9000 {
				t.Errorf("MTU = %d, want eth1's 9000", ext.MTU)
			}
		})
	}
}
