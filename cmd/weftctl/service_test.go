package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/testenv"
)

func TestServiceVerbs(t *testing.T) {
	srv := testenv.StartEtcd(t)
	ep := srv.Endpoint()
	conf := filepath.Join(t.TempDir(), "net-conf.json")
	os.WriteFile(conf, []byte(`{"Network":"100.96.0.0/12","ServiceNetwork":"100.64.0.0/16","NodePortRange":"30000-30100"}`), 0o644)
	if r := weftctl(t, ep, "", "config", "set", conf); r.code != 0 {
		t.Fatalf("config set: %+v", r)
	}

	r := weftctl(t, ep, "", "service", "add", "default/web", "--port", "80:8080", "--node-port", "30080", "--endpoint", "100.96.1.5", "--endpoint", "100.96.2.5")
	if r.code != 0 || !strings.Contains(r.stdout, "service default/web: VIPs 100.64.") {
		t.Fatalf("add: %+v", r)
	}
	r = weftctl(t, ep, "", "service", "list", "-o", "json")
	var list []struct {
		Name      string   `json:"name"`
		VIPs      []string `json:"vips"`
		Ports     []struct{ Port, TargetPort, NodePort int }
		Endpoints []struct{ Address string }
		Policy    string `json:"trafficPolicy"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 1 {
		t.Fatalf("list -o json: %v\n%+v", err, r)
	}
	web := list[0]
	if web.Name != "default/web" || len(web.VIPs) != 1 || web.Ports[0].TargetPort != 8080 || web.Ports[0].NodePort != 30080 || len(web.Endpoints) != 2 || web.Policy != "Cluster" {
		t.Errorf("listed %+v", web)
	}
	if r := weftctl(t, ep, "", "service", "list"); !strings.Contains(r.stdout, "default/web") || !strings.Contains(r.stdout, "80/tcp:8080 (node 30080)") || !strings.Contains(r.stdout, "2/2 ready") {
		t.Errorf("list:\n%s", r.stdout)
	}

	// Everything a user can get wrong: exit 2, one line naming the field,
	// nothing written.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"default/a", "--port", "80", "--vip", "100.65.0.1"}, "service default/a: vips[0] 100.65.0.1 is outside the service network 100.64.0.0/16"},
		{[]string{"default/a", "--port", "80", "--vip", "100.96.0.9"}, "vips[0] 100.96.0.9 is inside the pod network 100.96.0.0/12"},
		{[]string{"default/a", "--port", "0"}, `--port "0": port 0 is out of range; use 1 to 65535`},
		{[]string{"default/a", "--port", "70000"}, `--port "70000": port 70000 is out of range; use 1 to 65535`},
		{[]string{"default/a", "--port", "80/icmp"}, `ports[0].protocol "ICMP" is unknown; use TCP, UDP or SCTP`},
		{[]string{"default/a", "--port", "80", "--vip", web.VIPs[0]}, "service default/a: vips[0] " + web.VIPs[0] + " is already used by default/web"},
		{[]string{"default/a", "--port", "80", "--endpoint", "pod-1"}, `--endpoint "pod-1" is not an IP address`},
		{[]string{"default/a", "--port", "80", "--node-port", "32000"}, "ports[0].nodePort 32000 is outside the node port range 30000-30100"},
		{[]string{"default/a", "--port", "80", "--node-port", "30080"}, "service default/a: ports[0].nodePort 30080/TCP is already used by default/web"},
		{[]string{"default/a", "--port", "80", "--traffic-policy", "Nearest"}, `trafficPolicy "Nearest" is unknown; use Cluster or Local`},
		{[]string{"Default/a", "--port", "80"}, `namespace "Default" is not a DNS label`},
		{[]string{"default/web", "--port", "81"}, "service default/web exists"},
		{[]string{"default/a", "--port", "80", "--community", "64512:100000"}, `communities[0] "64512:100000" is not a community`},
	} {
		r := weftctl(t, ep, "", append([]string{"service", "add"}, tc.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("service add %v: exit %d, %q; want exit 2 and one line with %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	if r := weftctl(t, ep, "", "service", "get", "default/a"); r.code != 1 || !strings.Contains(r.stderr, "no such service default/a") {
		t.Errorf("a refused service was written: %+v", r)
	}

	// Endpoints: replace the set, one not ready.
	r = weftctl(t, ep, "", "service", "endpoints", "default/web", "100.96.3.5", "--not-ready", "100.96.1.5")
	if r.code != 0 {
		t.Fatalf("endpoints: %+v", r)
	}
	r = weftctl(t, ep, "", "service", "get", "default/web")
	if !strings.Contains(r.stdout, `"address": "100.96.3.5"`) || !strings.Contains(r.stdout, `"ready": false`) || strings.Contains(r.stdout, "100.96.2.5") {
		t.Errorf("get after endpoints:\n%s", r.stdout)
	}
	if r := weftctl(t, ep, "", "service", "endpoints", "default/web", "fd96::1"); r.code != 2 || !strings.Contains(r.stderr, "endpoints[0].address fd96::1 is IPv6 but the service has no IPv6 VIP") {
		t.Errorf("endpoint of the wrong family: %+v", r)
	}

	// Replace, then remove: the VIP and node port are free again.
	if r := weftctl(t, ep, "", "service", "add", "default/web", "--replace", "--port", "443", "--vip", web.VIPs[0]); r.code != 0 {
		t.Fatalf("add --replace: %+v", r)
	}
	if r := weftctl(t, ep, "", "service", "add", "default/b", "--port", "80", "--node-port", "30080"); r.code != 0 {
		t.Errorf("node port given up by --replace: %+v", r)
	}
	if r := weftctl(t, ep, "", "service", "rm", "default/web"); r.code != 0 || !strings.Contains(r.stdout, "removed service default/web") {
		t.Fatalf("rm: %+v", r)
	}
	if r := weftctl(t, ep, "", "service", "rm", "default/web"); r.code != 1 || !strings.Contains(r.stderr, "no such service default/web") {
		t.Errorf("rm twice: %+v", r)
	}
	if r := weftctl(t, ep, "", "service", "add", "default/c", "--port", "80", "--vip", web.VIPs[0]); r.code != 0 {
		t.Errorf("the VIP of a removed service: %+v", r)
	}
}

func TestServiceWithoutServiceNetwork(t *testing.T) {
	srv := testenv.StartEtcd(t)
	ep := srv.Endpoint()
	conf := filepath.Join(t.TempDir(), "net-conf.json")
	os.WriteFile(conf, []byte(`{"Network":"100.96.0.0/12"}`), 0o644)
	if r := weftctl(t, ep, "", "config", "set", conf); r.code != 0 {
		t.Fatalf("config set: %+v", r)
	}
	r := weftctl(t, ep, "", "service", "add", "default/web", "--port", "80")
	if r.code != 2 || !strings.Contains(r.stderr, "no ServiceNetwork") {
		t.Errorf("add without a service network: %+v", r)
	}
}
