package subnet

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseConfigDefaults(t *testing.T) {
	tests := []struct {
		name      string
		json      string
		subnetLen int
		min, max  string
		v6        *Pool
		backend   Backend
	}{
		{
			name:      "flannel defaults for a /12",
			json:      `{"Network":"100.96.0.0/12"}`,
			subnetLen: 24, min: "100.96.1.0", max: "100.111.255.0",
			backend: Backend{Type: "vxlan", VNI: 1},
		},
		{
			name:      "keys are case-insensitive",
			json:      `{"network":"100.96.0.0/16","SUBNETLEN":26,"backend":{"type":"host-gw"}}`,
			subnetLen: 26, min: "100.96.0.64", max: "100.96.255.192",
			backend: Backend{Type: "host-gw", VNI: 1},
		},
		{
			name:      "small network splits into four",
			json:      `{"Network":"100.96.0.0/26"}`,
			subnetLen: 28, min: "100.96.0.16", max: "100.96.0.48",
			backend: Backend{Type: "vxlan", VNI: 1},
		},
		{
			name:      "/22 still gets /24 subnets",
			json:      `{"Network":"100.96.0.0/22"}`,
			subnetLen: 24, min: "100.96.1.0", max: "100.96.3.0",
			backend: Backend{Type: "vxlan", VNI: 1},
		},
		{
			name:      "explicit range and vxlan options",
			json:      `{"Network":"100.96.0.0/12","SubnetMin":"100.96.10.0","SubnetMax":"100.96.20.0","Backend":{"Type":"VXLAN","VNI":42,"Port":4789,"GBP":true,"MTU":1400,"Learning":true,"DirectRouting":true}}`,
			subnetLen: 24, min: "100.96.10.0", max: "100.96.20.0",
			backend: Backend{Type: "vxlan", VNI: 42, Port: 4789, GBP: true, MTU: 1400, Learning: true, DirectRouting: true},
		},
		{
			name:      "dual stack",
			json:      `{"Network":"100.96.0.0/12","EnableIPv6":true,"IPv6Network":"fd96::/48"}`,
			subnetLen: 24, min: "100.96.1.0", max: "100.111.255.0",
			v6:      &Pool{Network: netip.MustParsePrefix("fd96::/48"), SubnetLen: 64, Min: netip.MustParseAddr("fd96:0:0:1::"), Max: netip.MustParseAddr("fd96:0:0:ffff::")},
			backend: Backend{Type: "vxlan", VNI: 1},
		},
		{
			name:    "IPv6 only",
			json:    `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd96::/48","IPv6SubnetLen":56}`,
			v6:      &Pool{Network: netip.MustParsePrefix("fd96::/48"), SubnetLen: 56, Min: netip.MustParseAddr("fd96:0:0:100::"), Max: netip.MustParseAddr("fd96:0:0:ff00::")},
			backend: Backend{Type: "vxlan", VNI: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := ParseConfig([]byte(tt.json))
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			if tt.min != "" {
				want := Pool{Network: cfg.IPv4.Network, SubnetLen: tt.subnetLen, Min: netip.MustParseAddr(tt.min), Max: netip.MustParseAddr(tt.max)}
				if cfg.IPv4 != want {
					t.Errorf("IPv4 pool = %+v, want %+v", cfg.IPv4, want)
				}
			} else if cfg.IPv4.Enabled() {
				t.Errorf("IPv4 enabled, want disabled")
			}
			if tt.v6 != nil && cfg.IPv6 != *tt.v6 {
				t.Errorf("IPv6 pool = %+v, want %+v", cfg.IPv6, *tt.v6)
			}
			if tt.v6 == nil && cfg.IPv6.Enabled() {
				t.Errorf("IPv6 enabled, want disabled")
			}
			if cfg.Backend != tt.backend {
				t.Errorf("Backend = %+v, want %+v", cfg.Backend, tt.backend)
			}
		})
	}
}

func TestParseConfigRejects(t *testing.T) {
	tests := []struct {
		json string
		want string // the whole message
	}{
		{``, `net-conf.json is empty; it must be a JSON object`},
		{`{"Network":`, `net-conf.json is not valid JSON: unexpected end of JSON input (at byte 11)`},
		{`[1,2]`, `net-conf.json must be a JSON object: json: cannot unmarshal array into Go value of type map[string]json.RawMessage`},
		{`null`, `net-conf.json must be a JSON object, not null`},
		{`{}`, `Network is missing; give the pod network as a CIDR, e.g. "100.96.0.0/12" (or set EnableIPv4 to false)`},
		{`{"Network":"100.96.0.0/33"}`, `Network "100.96.0.0/33" is not a valid CIDR; give it as address/length, e.g. "100.96.0.0/12"`},
		{`{"Network":"banana"}`, `Network "banana" is not a valid CIDR; give it as address/length, e.g. "100.96.0.0/12"`},
		{`{"Network":42}`, `Network 42 must be a string`},
		{`{"Network":"fd96::/48"}`, `Network "fd96::/48" is not an IPv4 network; put IPv6 networks in IPv6Network`},
		{`{"Network":"100.96.0.1/12"}`, `Network "100.96.0.1/12" has host bits set; did you mean "100.96.0.0/12"?`},
		{`{"Network":"100.96.0.0/29"}`, `Network "100.96.0.0/29" is too small: it must hold four subnets of at least 4 addresses, so use a prefix of /28 or shorter`},
		{`{"Network":"100.96.0.0/12","SubnetLen":8}`, `SubnetLen 8 must be longer than the Network prefix /12`},
		{`{"Network":"100.96.0.0/12","SubnetLen":13}`, `SubnetLen 13 leaves fewer than four subnets in Network /12; use 14 to 30`},
		{`{"Network":"100.96.0.0/12","SubnetLen":31}`, `SubnetLen 31 is too long; each node needs at least 4 addresses, so use at most 30`},
		{`{"Network":"100.96.0.0/12","SubnetLen":"24"}`, `SubnetLen "24" must be a whole number`},
		{`{"Network":"100.96.0.0/12","SubnetLen":24.5}`, `SubnetLen 24.5 must be a whole number`},
		{`{"Network":"100.96.0.0/12","SubnetMin":"100.200.0.0"}`, `SubnetMin "100.200.0.0" is outside Network 100.96.0.0/12`},
		{`{"Network":"100.96.0.0/12","SubnetMax":"100.96.3.7"}`, `SubnetMax "100.96.3.7" is not on a /24 boundary; did you mean "100.96.3.0"?`},
		{`{"Network":"100.96.0.0/12","SubnetMin":"fd96::"}`, `SubnetMin "fd96::" is not a valid IPv4 address`},
		{`{"Network":"100.96.0.0/12","SubnetMin":"100.96.9.0","SubnetMax":"100.96.8.0"}`, `SubnetMin 100.96.9.0 is above SubnetMax 100.96.8.0; the range of node subnets is empty`},
		{`{"Network":"100.96.0.0/12","EnableIPv4":"yes"}`, `EnableIPv4 "yes" must be true or false`},
		{`{"EnableIPv4":false}`, `EnableIPv4 and EnableIPv6 are both false; enable at least one address family`},
		{`{"Network":"100.96.0.0/12","EnableIPv6":true}`, `IPv6Network is missing; give the pod network as a CIDR, e.g. "fd96::/48" (or set EnableIPv6 to false)`},
		{`{"Network":"100.96.0.0/12","EnableIPv6":true,"IPv6Network":"100.64.0.0/10"}`, `IPv6Network "100.64.0.0/10" is not an IPv6 network; put IPv4 networks in Network`},
		{`{"Network":"100.96.0.0/12","EnableIPv6":true,"IPv6Network":"fd96::/48","IPv6SubnetLen":127}`, `IPv6SubnetLen 127 is too long; each node needs at least 4 addresses, so use at most 126`},
		{`{"Network":"100.96.0.0/12","Network":"100.96.0.0/12","network":"1.0.0.0/8"}`, `Network is given twice, as "Network" and "network"; keys are matched without regard to case`},
		{`{"Network":"100.96.0.0/12","Backend":{"Type":"vxlam"}}`, `Backend.Type "vxlam" is unknown; use one of vxlan, host-gw, ipip`},
		{`{"Network":"100.96.0.0/12","Backend":{"Type":7}}`, `Backend.Type 7 must be a string`},
		{`{"Network":"100.96.0.0/12","Backend":"vxlan"}`, `Backend must be a JSON object: json: cannot unmarshal string into Go value of type map[string]json.RawMessage`},
		{`{"Network":"100.96.0.0/12","Backend":{"Type":"vxlan","VNI":16777216}}`, `Backend.VNI 16777216 is out of range; use 0 to 16777215 (a VXLAN network identifier)`},
		{`{"Network":"100.96.0.0/12","Backend":{"Type":"vxlan","Port":70000}}`, `Backend.Port 70000 is out of range; use 0 to 65535 (a UDP port; 0 means the kernel default 8472)`},
		{`{"Network":"100.96.0.0/12","Backend":{"Type":"vxlan","MTU":20}}`, `Backend.MTU 20 is out of range; use 68 to 65535 (an MTU; 0 means derive it from the underlay)`},
		{`{"Network":"100.96.0.0/12","Backend":{"Type":"ipip","DirectRouting":"on"}}`, `Backend.DirectRouting "on" must be true or false`},
		{`{"Network":"100.96.0.0/12","EnableIPv6":true,"IPv6Network":"fd96::/48","Backend":{"MTU":1000}}`, `Backend.MTU 1000 is too small for IPv6; use at least 1280 or 0 for automatic`},
	}
	for _, tt := range tests {
		t.Run(tt.json, func(t *testing.T) {
			cfg, _, err := ParseConfig([]byte(tt.json))
			if err == nil {
				t.Fatalf("ParseConfig accepted it: %+v", cfg)
			}
			if err.Error() != tt.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tt.want)
			}
		})
	}
}

func TestParseConfigWarnsAboutUnusedKeys(t *testing.T) {
	_, warnings, err := ParseConfig([]byte(`{"Network":"100.96.0.0/12","EnableNFTables":true,"Backend":{"Type":"host-gw","VNI":3}}`))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(warnings, "\n")
	for _, want := range []string{`"EnableNFTables" is not used by weft`, `Backend.VNI does not apply to the host-gw backend`} {
		if !strings.Contains(got, want) {
			t.Errorf("warnings %q lack %q", got, want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, seed := range []string{
		`{"Network":"100.96.0.0/12"}`,
		`{"Network":"100.96.0.0/12","SubnetLen":26,"SubnetMin":"100.96.0.64","SubnetMax":"100.96.3.192","Backend":{"Type":"vxlan","VNI":1,"Port":8472}}`,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd96::/48","IPv6SubnetLen":64}`,
		`{"Network":"0.0.0.0/0","IPv6Network":"::/0","EnableIPv6":true}`,
		`{"network":"100.96.0.0/28","backend":{"type":"ipip","mtu":1480}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, _, err := ParseConfig(data)
		if err != nil {
			return
		}
		for _, p := range cfg.Pools() {
			if p.Count() < 1 {
				t.Fatalf("accepted a pool with no subnets: %+v", p)
			}
			if !p.Contains(p.Nth(0)) || !p.Contains(p.Nth(p.Count()-1)) && p.Count() != ^uint64(0) {
				t.Fatalf("pool %+v does not contain its own ends", p)
			}
		}
	})
}

func TestParseBGP(t *testing.T) {
	cfg, warnings, err := ParseConfig([]byte(`{"Network":"100.96.0.0/12","BGP":{"ASN":4200000001,"Peers":[{"Address":"198.18.0.253","ASN":64500},{"Address":"fd18::fd","ASN":64500,"Port":1179}],"Communities":["64512:100"],"GracefulRestartTime":30,"AdvertisePodSubnets":false,"ServiceCommunities":["64512:200"],"AggregateServiceNetwork":true,"Bogus":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	b := cfg.BGP
	want := &BGP{
		ASN: 4200000001, GracefulRestartTime: 30 * time.Second,
		Peers: []BGPPeer{
			{Address: netip.MustParseAddr("198.18.0.253"), ASN: 64500, Port: 179},
			{Address: netip.MustParseAddr("fd18::fd"), ASN: 64500, Port: 1179},
		},
		Communities: []Community{64512<<16 | 100}, ServiceCommunities: []Community{64512<<16 | 200},
		AdvertiseServiceVIPs: true, AggregateServiceNetwork: true,
	}
	if !b.Equal(want) {
		t.Errorf("BGP = %+v, want %+v", b, want)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], `"BGP.Bogus" is not used`) {
		t.Errorf("warnings = %q", warnings)
	}
	if got := b.Communities[0].String(); got != "64512:100" {
		t.Errorf("community prints as %s", got)
	}

	cfg, _, err = ParseConfig([]byte(`{"Network":"100.96.0.0/12","BGP":{}}`))
	if err != nil || cfg.BGP.ASN != 64512 || cfg.BGP.GracefulRestartTime != 120*time.Second || !cfg.BGP.AdvertisePodSubnets || !cfg.BGP.AdvertiseServiceVIPs || cfg.BGP.AggregateServiceNetwork {
		t.Errorf("defaults: %+v, %v", cfg.BGP, err)
	}
	if cfg, _, _ := ParseConfig([]byte(`{"Network":"100.96.0.0/12"}`)); cfg.BGP != nil {
		t.Errorf("BGP without a BGP object: %+v", cfg.BGP)
	}
}

func TestBadBGPConfigNamesTheKey(t *testing.T) {
	for _, tt := range []struct{ bgp, want string }{
		{`{"ASN":0}`, "BGP.ASN 0 is out of range; use 1 to 4294967295"},
		{`{"ASN":4294967296}`, "BGP.ASN 4294967296 is out of range"},
		{`{"ASN":23456}`, "BGP.ASN 23456 is AS_TRANS"},
		{`{"ASN":"64512"}`, `BGP.ASN "64512" must be a whole number`},
		{`{"Peers":[{"Address":"198.18.0.300","ASN":64500}]}`, `BGP.Peers[0].Address "198.18.0.300" is not a unicast IP address`},
		{`{"Peers":[{"ASN":64500}]}`, "BGP.Peers[0].Address is missing"},
		{`{"Peers":[{"Address":"198.18.0.253"}]}`, "BGP.Peers[0].ASN is missing"},
		{`{"Peers":[{"Address":"198.18.0.253","ASN":64500,"Port":0}]}`, "BGP.Peers[0].Port 0 is out of range"},
		{`{"Peers":[{"Address":"198.18.0.253","ASN":64500,"Password":"x"}]}`, "BGP.Peers[0].Password is not a key of a BGP peer"},
		{`{"Peers":[{"Address":"198.18.0.253","ASN":64500},{"Address":"198.18.0.253","ASN":64501}]}`, "BGP.Peers[1].Address 198.18.0.253 is given twice"},
		{`{"Peers":"198.18.0.253"}`, "BGP.Peers \"198.18.0.253\" must be a list of objects"},
		{`{"Communities":["64512"]}`, `BGP.Communities[0] "64512" is not a community; give it as ASN:VALUE`},
		{`{"Communities":["64512:70000"]}`, `BGP.Communities[0] "64512:70000" is not a community`},
		{`{"GracefulRestartTime":5000}`, "BGP.GracefulRestartTime 5000 is out of range; use 1 to 4095"},
		{`{"AdvertisePodSubnets":"yes"}`, `BGP.AdvertisePodSubnets "yes" must be true or false`},
		{`{"AdvertiseServiceVIPs":1}`, `BGP.AdvertiseServiceVIPs 1 must be true or false`},
		{`{"ServiceCommunities":["64512:x"]}`, `BGP.ServiceCommunities[0] "64512:x" is not a community`},
		{`[]`, "BGP must be a JSON object"},
	} {
		_, _, err := ParseConfig([]byte(`{"Network":"100.96.0.0/12","BGP":` + tt.bgp + `}`))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("BGP %s: err = %v, want %q", tt.bgp, err, tt.want)
		}
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.HasPrefix(ce.Key, "BGP") {
			t.Errorf("BGP %s: error is not a ConfigError naming a BGP key: %#v", tt.bgp, err)
		}
	}
}

func TestParseServiceNetworks(t *testing.T) {
	cfg, _, err := ParseConfig([]byte(`{"Network":"100.96.0.0/12","EnableIPv6":true,"IPv6Network":"fd96::/48","ServiceNetwork":"100.64.0.0/16","ServiceIPv6Network":"fd64::/108","NodePortRange":"30000-30100"}`))
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Services
	if s.IPv4 != netip.MustParsePrefix("100.64.0.0/16") || s.IPv6 != netip.MustParsePrefix("fd64::/108") || s.NodePortMin != 30000 || s.NodePortMax != 30100 || !s.Enabled() {
		t.Errorf("services = %+v", s)
	}
	cfg, _, _ = ParseConfig([]byte(`{"Network":"100.96.0.0/12"}`))
	if cfg.Services.Enabled() || cfg.Services.NodePortMin != 30000 || cfg.Services.NodePortMax != 32767 {
		t.Errorf("without service networks: %+v", cfg.Services)
	}
}

func TestBadServiceNetworksNameTheKey(t *testing.T) {
	for _, tt := range []struct{ keys, want string }{
		{`"ServiceNetwork":"100.64.0.0"`, `ServiceNetwork "100.64.0.0" is not a valid CIDR`},
		{`"ServiceNetwork":"fd64::/108"`, `ServiceNetwork "fd64::/108" is not an IPv4 network`},
		{`"ServiceNetwork":"100.64.0.1/16"`, `has host bits set; did you mean "100.64.0.0/16"?`},
		{`"ServiceNetwork":"100.64.0.0/31"`, `too small`},
		{`"ServiceNetwork":"100.96.0.0/16"`, "ServiceNetwork 100.96.0.0/16 overlaps the pod network 100.96.0.0/12"},
		{`"ServiceIPv6Network":"100.64.0.0/16"`, `ServiceIPv6Network "100.64.0.0/16" is not an IPv6 network`},
		{`"NodePortRange":"30000"`, `NodePortRange "30000" is not a range of ports`},
		{`"NodePortRange":"32000-30000"`, `NodePortRange "32000-30000" is not a range of ports`},
	} {
		_, _, err := ParseConfig([]byte(`{"Network":"100.96.0.0/12",` + tt.keys + `}`))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.keys, err, tt.want)
		}
	}
}
