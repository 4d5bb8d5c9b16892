package proxy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/service"
)

var testNode = &Node{
	Subnets:         []netip.Prefix{netip.MustParsePrefix("100.96.1.0/24")},
	PodNetworks:     []netip.Prefix{netip.MustParsePrefix("100.96.0.0/12")},
	ServiceNetworks: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/16")},
}

func svc(t testing.TB, key, doc string) *service.Service {
	t.Helper()
	s, err := service.Parse(key, []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBuildClusterService(t *testing.T) {
	st := Build([]*service.Service{svc(t, "default/web", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80,"targetPort":8080,"nodePort":30080}],
		"endpoints":[{"address":"100.96.1.5"},{"address":"100.96.2.5"},{"address":"100.96.3.5","ready":false}]}`)}, testNode)
	d := st.Describe()
	for _, want := range []string{
		"service-ips-v4: 100.64.0.10 . 6 . 80 : goto svc-default/web/tcp/80/v4\n",
		"service-nodeports-v4: 6 . 30080 : goto ext-default/web/tcp/80/v4\n",
		"saddr != { 100.96.0.0/12 } jump mark-for-masquerade\n",
		"meta l4proto 6 dnat to numgen random mod 2 map { 0 : 100.96.1.5:8080, 1 : 100.96.2.5:8080 }\n",
	} {
		if !strings.Contains(d, want) {
			t.Errorf("missing %q in\n%s", want, d)
		}
	}
	if strings.Contains(d, "100.96.3.5") {
		t.Errorf("a not-ready endpoint is programmed:\n%s", d)
	}
	if st.Services != 1 || st.Endpoints != 2 {
		t.Errorf("counted %d services, %d endpoints; want 1, 2", st.Services, st.Endpoints)
	}
}

func TestBuildLocalSendsOutsideTrafficToLocalEndpointsOnly(t *testing.T) {
	st := Build([]*service.Service{svc(t, "default/web", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80,"nodePort":30080}],"trafficPolicy":"Local",
		"endpoints":[{"address":"100.96.1.5"},{"address":"100.96.2.5"}]}`)}, testNode)
	lb := st.Chains[st.Entries["svc-default/web/tcp/80/v4"]]
	if lb == nil || len(lb.Rules) != 3 {
		t.Fatalf("lb chain: %v", lb)
	}
	if last := st.Chains[lb.Rules[2].Goto]; last == nil || last.Rules[0].DNAT == nil || last.Rules[0].DNAT.Addr != netip.MustParseAddr("100.96.1.5") {
		t.Errorf("traffic from outside does not go to the local endpoint alone:\n%s", st.Describe())
	}
	if strings.Contains(lb.String(), "mark-for-masquerade") {
		t.Errorf("Local masquerades VIP traffic:\n%s", lb)
	}
	// Without a local endpoint, traffic from outside is dropped.
	st = Build([]*service.Service{svc(t, "default/web", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80}],"trafficPolicy":"Local",
		"endpoints":[{"address":"100.96.2.5"}]}`)}, testNode)
	if lb := st.Chains[st.Entries["svc-default/web/tcp/80/v4"]]; !lb.Rules[2].Drop {
		t.Errorf("no local endpoint: %s", lb)
	}
}

func TestBuildWithoutEndpointsRejects(t *testing.T) {
	st := Build([]*service.Service{svc(t, "default/web", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80}],"endpoints":[{"address":"100.96.2.5","ready":false}]}`)}, testNode)
	if st.Entries["svc-default/web/tcp/80/v4"] != chainNoEndpoints || len(st.Chains) != 0 {
		t.Errorf("state:\n%s", st.Describe())
	}
}

func TestBuildAffinity(t *testing.T) {
	st := Build([]*service.Service{svc(t, "default/web", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80}],"affinityTimeoutSeconds":5,
		"endpoints":[{"address":"100.96.1.5"},{"address":"100.96.2.5"}]}`)}, testNode)
	if len(st.Affinity) != 2 {
		t.Errorf("affinity sets: %v", st.Affinity)
	}
	d := st.Describe()
	for _, want := range []string{"update @aff-", "numgen random mod 2 vmap { 0 : goto ep-", "timeout 5s"} {
		if !strings.Contains(d, want) {
			t.Errorf("missing %q in\n%s", want, d)
		}
	}
}

// A change of endpoints keeps the stable chains and map elements and
// changes only the content chain they go to: the add-only update of
// nft.go depends on it.
func TestEndpointChangeKeepsStableNames(t *testing.T) {
	a := Build([]*service.Service{svc(t, "default/web", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80}],"endpoints":[{"address":"100.96.1.5"},{"address":"100.96.2.5"}]}`)}, testNode)
	b := Build([]*service.Service{svc(t, "default/web", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80}],"endpoints":[{"address":"100.96.1.5"}]}`)}, testNode)
	if a.ServiceIPs[IPv4][ServiceKey{VIP: netip.MustParseAddr("100.64.0.10"), Proto: 6, Port: 80}] != b.ServiceIPs[IPv4][ServiceKey{VIP: netip.MustParseAddr("100.64.0.10"), Proto: 6, Port: 80}] {
		t.Error("the map element changed")
	}
	// The lb chain names the to- chain, which changed: so must it.
	if a.Entries["svc-default/web/tcp/80/v4"] == b.Entries["svc-default/web/tcp/80/v4"] {
		t.Error("the stable chain goes to the same content chain after its endpoints changed")
	}
}

func TestDualStackServiceHasAChainPerFamily(t *testing.T) {
	node := *testNode
	node.PodNetworks = append(node.PodNetworks, netip.MustParsePrefix("fd96::/48"))
	st := Build([]*service.Service{svc(t, "default/web", `{"vips":["100.64.0.10","fd64::10"],"ports":[{"protocol":"UDP","port":53}],
		"endpoints":[{"address":"100.96.1.5"},{"address":"fd96:0:0:1::5"}]}`)}, &node)
	d := st.Describe()
	for _, want := range []string{
		"service-ips-v4: 100.64.0.10 . 17 . 53 : goto svc-default/web/udp/53/v4",
		"service-ips-v6: fd64::10 . 17 . 53 : goto svc-default/web/udp/53/v6",
		"dnat to [fd96:0:0:1::5]:53",
		"dnat to 100.96.1.5:53",
	} {
		if !strings.Contains(d, want) {
			t.Errorf("missing %q in\n%s", want, d)
		}
	}
}

func TestRuleForAFamilyWithoutPodsNeverMatches(t *testing.T) {
	r := Rule{SrcIn: []netip.Prefix{netip.MustParsePrefix("100.96.0.0/12")}, Goto: "x"}
	if r.canMatch(IPv6) || !r.canMatch(IPv4) {
		t.Error("a rule on IPv4 sources would match IPv6 packets (all of them, having no condition left)")
	}
}
