package service

import (
	"errors"
	"strings"
	"testing"

	"github.com/weft-net/weft/subnet"
)

func network(t testing.TB) *subnet.Config {
	t.Helper()
	cfg, _, err := subnet.ParseConfig([]byte(`{"Network":"100.96.0.0/12","EnableIPv6":true,"IPv6Network":"fd96::/48","ServiceNetwork":"100.64.0.0/16","ServiceIPv6Network":"fd64::/108","NodePortRange":"30000-32767"}`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestParseAndValidate(t *testing.T) {
	s, err := Parse("default/web", []byte(`{"vips":["100.64.0.10","fd64::a"],"ports":[{"name":"http","protocol":"tcp","port":80,"targetPort":8080,"nodePort":30080}],"endpoints":[{"address":"100.96.3.5"},{"address":"fd96:0:0:3::5","ready":false}],"affinityTimeoutSeconds":60}`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Key() != "default/web" || s.TrafficPolicy != Cluster || s.Ports[0].Protocol != TCP || s.Ports[0].Target() != 8080 || s.Affinity().Seconds() != 60 {
		t.Errorf("parsed %+v", s)
	}
	if !s.Endpoints[0].IsReady() || s.Endpoints[1].IsReady() {
		t.Errorf("readiness: %+v", s.Endpoints)
	}
	if err := s.Validate(network(t)); err != nil {
		t.Errorf("Validate = %v", err)
	}
	again, err := Parse("default/web", s.Marshal())
	if err != nil || !again.Equal(s) {
		t.Errorf("round trip: %+v, %v", again, err)
	}
}

func TestBadDefinitionsNameTheField(t *testing.T) {
	for _, tt := range []struct{ key, doc, want string }{
		{"default/web", `{"vips":["100.65.0.1"],"ports":[{"protocol":"TCP","port":80}]}`, "vips[0] 100.65.0.1 is outside the service network 100.64.0.0/16"},
		{"default/web", `{"vips":["100.96.1.5"],"ports":[{"protocol":"TCP","port":80}]}`, "vips[0] 100.96.1.5 is inside the pod network 100.96.0.0/12"},
		{"default/web", `{"vips":["100.64.0.1","100.64.0.2"],"ports":[{"protocol":"TCP","port":80}]}`, "vips[1] 100.64.0.2 is a second IPv4 VIP"},
		{"default/web", `{"vips":[],"ports":[{"protocol":"TCP","port":80}]}`, "vips is empty"},
		{"default/web", `{"vips":["100.64.0.1"],"ports":[{"protocol":"TCP","port":0}]}`, "ports[0].port 0 is out of range; use 1 to 65535"},
		{"default/web", `{"vips":["100.64.0.1"],"ports":[{"protocol":"TCP","port":70000}]}`, "ports[0].port 70000 is out of range; use 1 to 65535"},
		{"default/web", `{"vips":["100.64.0.1"],"ports":[{"protocol":"ICMP","port":1}]}`, `ports[0].protocol "ICMP" is unknown; use TCP, UDP or SCTP`},
		{"default/web", `{"vips":["100.64.0.1"],"ports":[{"protocol":"TCP","port":80},{"protocol":"TCP","port":80}]}`, "ports[1].port 80/TCP is given twice (also ports[0])"},
		{"default/web", `{"vips":["100.64.0.1"],"ports":[{"protocol":"TCP","port":80,"nodePort":29999}]}`, "ports[0].nodePort 29999 is outside the node port range 30000-32767"},
		{"default/web", `{"vips":["100.64.0.1"],"ports":[{"protocol":"TCP","port":80}],"endpoints":[{"address":"pod-1"}]}`, `endpoints[0].address "pod-1" is not an IP address`},
		{"default/web", `{"vips":["100.64.0.1"],"ports":[{"protocol":"TCP","port":80}],"endpoints":[{"address":"fd96::5"}]}`, "endpoints[0].address fd96::5 is IPv6 but the service has no IPv6 VIP"},
		{"default/web", `{"vips":["100.64.0.1"],"ports":[{"protocol":"TCP","port":80}],"trafficPolicy":"Nearest"}`, `trafficPolicy "Nearest" is unknown; use Cluster or Local`},
		{"default/web", `{"vips":["100.64.0.1"],"ports":[{"protocol":"TCP","port":80}],"affinityTimeoutSeconds":-1}`, "affinityTimeoutSeconds -1 is out of range"},
		{"default/web", `{"vips":["100.64.0.1"],"ports":[{"protocol":"TCP","port":80}],"colour":"red"}`, `unknown field "colour"`},
		{"default/web", `{"vips":["100.64.0.1"],"ports":[{"protocol":"TCP","port":80}],"communities":["64512"]}`, `communities[0] "64512" is not a community`},
		{"default/web", `{"vips":["100.64.0.1"],"ports":[{"protocol":"TCP","port":80}],"advertise":"yes"}`, `advertise: string where bool was expected`},
		{"default/web", `{"vips":`, "not valid JSON"},
		{"Default/web", `{}`, `namespace "Default" is not a DNS label`},
		{"default", `{}`, `"default" is not NAMESPACE/NAME`},
	} {
		s, err := Parse(tt.key, []byte(tt.doc))
		if err == nil {
			err = s.Validate(network(t))
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s %s: err = %v, want %q", tt.key, tt.doc, err, tt.want)
		}
	}
	noServices, _, _ := subnet.ParseConfig([]byte(`{"Network":"100.96.0.0/12"}`))
	s, _ := Parse("default/web", []byte(`{"vips":["100.64.0.1"],"ports":[{"protocol":"TCP","port":80}]}`))
	var ve *ValidationError
	if err := s.Validate(noServices); !errors.As(err, &ve) || ve.Field != "vips" || !strings.Contains(err.Error(), "no ServiceNetwork") {
		t.Errorf("without a service network: %v", err)
	}
}

func TestAdmitKeepsTheFirstOfAConflict(t *testing.T) {
	parse := func(key, doc string) *Service {
		s, err := Parse(key, []byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a := parse("default/a", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80,"nodePort":30080}]}`)
	b := parse("default/b", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80}]}`)                  // same VIP and port
	c := parse("default/c", `{"vips":["100.64.0.11"],"ports":[{"protocol":"TCP","port":81,"nodePort":30080}]}`) // same node port
	d := parse("default/d", `{"vips":["100.64.0.10"],"ports":[{"protocol":"UDP","port":80}]}`)                  // same VIP, other protocol: fine
	admitted, refused := Admit([]*Service{d, c, b, a})
	if len(admitted) != 2 || admitted[0] != a || admitted[1] != d {
		t.Errorf("admitted %v", admitted)
	}
	if len(refused) != 2 || !strings.Contains(refused[0].Error(), "service default/b: VIP 100.64.0.10 port 80/TCP is already used by default/a") ||
		!strings.Contains(refused[1].Error(), "service default/c: node port 30080/TCP is already used by default/a") {
		t.Errorf("refused %v", refused)
	}
	// A newer service never displaces the one that holds the VIP, whatever
	// its name.
	a.Created, b.Created = 20, 10
	admitted, refused = Admit([]*Service{a, b})
	if len(admitted) != 1 || admitted[0] != b || len(refused) != 1 || !strings.Contains(refused[0].Error(), "service default/a: VIP 100.64.0.10 port 80/TCP is already used by default/b") {
		t.Errorf("older b: admitted %v, refused %v", admitted, refused)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("default/web", []byte(`{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80}],"endpoints":[{"address":"100.96.3.5"}]}`))
	f.Add("a/b", []byte(`{}`))
	cfg := network(f)
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		s, err := Parse(key, value)
		if err != nil {
			return
		}
		if s.Validate(cfg) != nil {
			return
		}
		again, err := Parse(key, s.Marshal())
		if err != nil || !again.Equal(s) || again.Validate(cfg) != nil {
			t.Errorf("a valid service does not survive its own encoding: %v", err)
		}
	})
}
