package subnet

import (
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestKeyRoundTrip(t *testing.T) {
	tests := []struct {
		key    string
		v4, v6 string
	}{
		{"100.96.3.0-24", "100.96.3.0/24", ""},
		{"100.96.3.0-24&fd96:0:0:3::-64", "100.96.3.0/24", "fd96:0:0:3::/64"},
		{"fd96:0:0:3::-64", "", "fd96:0:0:3::/64"},
		{"10.244.0.0-24", "10.244.0.0/24", ""},
	}
	for _, tt := range tests {
		v4, v6, err := ParseKey(tt.key)
		if err != nil {
			t.Fatalf("ParseKey(%q): %v", tt.key, err)
		}
		if got, want := v4, parsePrefixOrZero(tt.v4); got != want {
			t.Errorf("ParseKey(%q) v4 = %v, want %v", tt.key, got, want)
		}
		if got, want := v6, parsePrefixOrZero(tt.v6); got != want {
			t.Errorf("ParseKey(%q) v6 = %v, want %v", tt.key, got, want)
		}
		if got := MakeKey(v4, v6); got != tt.key {
			t.Errorf("MakeKey(%v, %v) = %q, want %q", v4, v6, got, tt.key)
		}
	}
}

func TestParseKeyFlannelIPv6Only(t *testing.T) {
	v4, v6, err := ParseKey("0.0.0.0-0&fd96:0:0:3::-64")
	if err != nil {
		t.Fatal(err)
	}
	if v4.IsValid() || v6 != netip.MustParsePrefix("fd96:0:0:3::/64") {
		t.Errorf("got %v %v", v4, v6)
	}
}

func TestParseKeyRejects(t *testing.T) {
	for _, key := range []string{
		"", "100.96.3.0", "100.96.3.0-", "100.96.3.0-33", "100.96.3.1-24", "100.96.3.0-024",
		"banana-24", "100.96.3.0-24&", "fd96::-64&100.96.3.0-24", "100.96.3.0-24&100.96.4.0-24",
		"fe80::%eth0-64",
	} {
		if _, _, err := ParseKey(key); err == nil {
			t.Errorf("ParseKey(%q) accepted it", key)
		}
	}
}

// flannelLease is a lease value exactly as flanneld v0.2x writes it for the
// vxlan backend (LeaseAttrs with omitempty fields), built from its format.
const flannelLease = `{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:2f:9a:01:02:03"}}`

func TestParseFlannelLease(t *testing.T) {
	l, err := ParseLease("100.96.3.0-24", []byte(flannelLease))
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet != netip.MustParsePrefix("100.96.3.0/24") || l.PublicIP != netip.MustParseAddr("198.18.0.3") {
		t.Errorf("got %+v", l)
	}
	if l.PublicIPv6.IsValid() || l.BackendType != "vxlan" || l.Node != "" {
		t.Errorf("got %+v", l)
	}
	if mac := l.VtepMAC(); mac.String() != "6e:2f:9a:01:02:03" {
		t.Errorf("VtepMAC = %v", mac)
	}
}

func TestParseFlannelDualStackLease(t *testing.T) {
	value := `{"PublicIP":"198.18.0.3","PublicIPv6":"fd18::3","BackendType":"vxlan",` +
		`"BackendData":{"VNI":1,"VtepMAC":"6e:2f:9a:01:02:03"},"BackendV6Data":{"VNI":1,"VtepMAC":"6e:2f:9a:01:02:04"}}`
	l, err := ParseLease("100.96.3.0-24&fd96:0:0:3::-64", []byte(value))
	if err != nil {
		t.Fatal(err)
	}
	if l.IPv6Subnet != netip.MustParsePrefix("fd96:0:0:3::/64") || l.PublicIPv6 != netip.MustParseAddr("fd18::3") {
		t.Errorf("got %+v", l)
	}
	if !strings.Contains(string(l.BackendV6Data), "6e:2f:9a:01:02:04") {
		t.Errorf("BackendV6Data = %s", l.BackendV6Data)
	}
}

func TestLeaseJSONIsDesignFormat(t *testing.T) {
	a := Attrs{
		PublicIP:    netip.MustParseAddr("198.18.0.3"),
		BackendType: "vxlan",
		BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"6e:2f:9a:01:02:03"}`),
		Node:        "node-3",
	}
	got, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:2f:9a:01:02:03"},"BackendV6Data":null,"Node":"node-3"}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	var back Attrs
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatal(err)
	}
	if back.PublicIP != a.PublicIP || back.Node != a.Node || string(back.BackendData) != string(a.BackendData) || back.BackendV6Data != nil {
		t.Errorf("round trip: %+v", back)
	}
}

func TestHostGWLeaseHasNoBackendData(t *testing.T) {
	got, _ := json.Marshal(Attrs{PublicIP: netip.MustParseAddr("198.18.0.4"), BackendType: "host-gw"})
	want := `{"PublicIP":"198.18.0.4","PublicIPv6":null,"BackendType":"host-gw","BackendData":null,"BackendV6Data":null}`
	if string(got) != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestParseLeaseRejects(t *testing.T) {
	tests := []struct{ key, value, want string }{
		{"100.96.3.0-24", `garbage`, "value is not a lease"},
		{"100.96.3.0-24", `{"PublicIP":"fd18::3"}`, `PublicIP "fd18::3" is not an IPv4 address`},
		{"100.96.3.0-24", `{"PublicIP":"198.18.0.3","PublicIPv6":"198.18.0.3"}`, `PublicIPv6 "198.18.0.3" is not an IPv6 address`},
		{"100.96.3.0-24", `{"PublicIP":"198.18.0.3","Node":` + `"` + strings.Repeat("x", MaxLeaseValue) + `"}`, "larger than"},
		{"nonsense", `{"PublicIP":"198.18.0.3"}`, `lease key "nonsense"`},
	}
	for _, tt := range tests {
		_, err := ParseLease(tt.key, []byte(tt.value))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseLease(%q, %.40q) = %v, want an error with %q", tt.key, tt.value, err, tt.want)
		}
	}
}

func TestCheckLease(t *testing.T) {
	v4, _, _ := ParseConfig([]byte(`{"Network":"100.96.0.0/12"}`))
	dual, _, _ := ParseConfig([]byte(`{"Network":"100.96.0.0/12","EnableIPv6":true,"IPv6Network":"fd96::/48"}`))
	tests := []struct {
		cfg   *Config
		key   string
		value string
		want  string // "" for accepted
	}{
		{v4, "100.96.3.0-24", `{"PublicIP":"198.18.0.3"}`, ""},
		{v4, "100.96.3.0-24&fd96:0:0:3::-64", `{"PublicIP":"198.18.0.3","PublicIPv6":"fd18::3"}`, ""},
		{v4, "100.112.3.0-24", `{"PublicIP":"198.18.0.3"}`, "subnet 100.112.3.0/24 is not inside the network 100.96.0.0/12"},
		{v4, "100.64.0.0-10", `{"PublicIP":"198.18.0.3"}`, "is not inside the network"},
		// SubnetMin and SubnetMax bound allocation only: a lease anywhere in
		// the network is a peer (kube-controller-manager's first /24, a
		// range narrowed after the node leased its subnet).
		{v4, "100.96.0.0-24", `{"PublicIP":"198.18.0.3"}`, ""},
		{v4, "100.96.3.0-25", `{"PublicIP":"198.18.0.3"}`, ""},
		{v4, "fd96:0:0:3::-64", `{"PublicIPv6":"fd18::3"}`, "wrong address family"},
		{v4, "100.96.3.0-24", `{"PublicIP":"0.0.0.0"}`, "no public IPv4 address"},
		{dual, "100.96.3.0-24", `{"PublicIP":"198.18.0.3"}`, "has no IPv6 subnet"},
		{dual, "100.96.3.0-24&fd96:0:0:3::-64", `{"PublicIP":"198.18.0.3"}`, "no public IPv6 address"},
		{dual, "100.96.3.0-24&fd96:0:0:3::-64", `{"PublicIP":"198.18.0.3","PublicIPv6":"fd18::3"}`, ""},
	}
	for _, tt := range tests {
		l, err := ParseLease(tt.key, []byte(tt.value))
		if err != nil {
			t.Fatalf("ParseLease(%q): %v", tt.key, err)
		}
		err = tt.cfg.CheckLease(&l)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("CheckLease(%s) = %v, want accepted", tt.key, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("CheckLease(%s) = %v, want an error with %q", tt.key, err, tt.want)
		}
	}
}

func FuzzParseLease(f *testing.F) {
	f.Add("100.96.3.0-24", []byte(flannelLease))
	f.Add("100.96.3.0-24&fd96:0:0:3::-64", []byte(`{"PublicIP":"198.18.0.3","PublicIPv6":"fd18::3"}`))
	f.Add("fd96::-64", []byte(`{"publicip":"0.0.0.0","BackendData":[1,2]}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		l, err := ParseLease(key, value)
		if err != nil {
			return
		}
		// A lease that parses has a key that round-trips.
		v4, v6, err := ParseKey(l.Key())
		if err != nil || v4 != l.Subnet || v6 != l.IPv6Subnet {
			t.Fatalf("key %q of %q does not round-trip: %v %v %v", l.Key(), key, v4, v6, err)
		}
		if _, err := json.Marshal(l.Attrs); err != nil {
			t.Fatalf("cannot re-encode %+v: %v", l.Attrs, err)
		}
	})
}

func parsePrefixOrZero(s string) netip.Prefix {
	if s == "" {
		return netip.Prefix{}
	}
	return netip.MustParsePrefix(s)
}

func BenchmarkParseLease(b *testing.B) {
	value := []byte(`{"PublicIP":"198.18.0.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:2f:9a:01:02:03"},"BackendV6Data":null,"Node":"node-3"}`)
	cfg, _, _ := ParseConfig([]byte(`{"Network":"100.96.0.0/12"}`))
	b.ReportAllocs()
	for b.Loop() {
		l, err := ParseLease("100.96.3.0-24", value)
		if err != nil || cfg.CheckLease(&l) != nil {
			b.Fatal(err)
		}
	}
}

func TestVtepMACFastPathAgreesWithTheDecoder(t *testing.T) {
	for _, data := range []string{
		`{"VNI":1,"VtepMAC":"0e:be:00:00:00:01"}`,
		`{"VNI":4096,"VtepMAC":"0E:BE:00:00:00:01"}`,
		`{"VNI":1,"VtepMAC":"0e:be:00:00:00:zz"}`,
		`{"VNI":1,"VtepMAC":"0e:be:00:00:00:01","VtepMAC":"0e:be:00:00:00:02"}`,
		`{"VNI":1, "VtepMAC":"0e:be:00:00:00:01"}`,
		`{"VtepMAC":"0e:be:00:00:00:01","VNI":1}`,
		`{"VNI":1,"vtepmac":"0e:be:00:00:00:01"}`,
		`{"VNI":,"VtepMAC":"0e:be:00:00:00:01"}`,
		`{"VNI":1,"VtepMAC":"00:00:5e:00:53:01:00:00"}`,
		`null`, ``,
	} {
		var d struct{ VtepMAC string }
		var want net.HardwareAddr
		if json.Unmarshal([]byte(data), &d) == nil {
			if mac, err := net.ParseMAC(d.VtepMAC); err == nil {
				want = mac
			}
		}
		if got := VtepMAC(json.RawMessage(data)); got.String() != want.String() {
			t.Errorf("VtepMAC(%s) = %q, the decoder reads %q", data, got, want)
		}
	}
}

func BenchmarkVtepMAC(b *testing.B) {
	data := json.RawMessage(`{"VNI":1,"VtepMAC":"0e:be:00:00:00:01"}`)
	b.ReportAllocs()
	for b.Loop() {
		VtepMAC(data)
	}
}
