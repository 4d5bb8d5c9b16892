package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/bgp"
	"github.com/weft-net/weft/internal/etcdwatch"
	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/service"
	"github.com/weft-net/weft/subnet"
)

// fakeKernel records what the proxy asks of the table.
type fakeKernel struct {
	mu      sync.Mutex
	syncs   []*State
	removed int
}

func (k *fakeKernel) Sync(st *State, _ []netip.Prefix) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.syncs = append(k.syncs, st)
	return 1, nil
}
func (k *fakeKernel) Pending() bool          { return false }
func (k *fakeKernel) Collect() error         { return nil }
func (k *fakeKernel) Resync()                {}
func (k *fakeKernel) Check() (string, error) { return "", nil }
func (k *fakeKernel) Remove() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.removed++
	return nil
}

func (k *fakeKernel) last() (*State, int, int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.syncs) == 0 {
		return nil, 0, k.removed
	}
	return k.syncs[len(k.syncs)-1], len(k.syncs), k.removed
}

func testNetwork(t testing.TB, services bool) *subnet.Config {
	t.Helper()
	doc := `{"Network":"100.96.0.0/12"}`
	if services {
		doc = `{"Network":"100.96.0.0/12","ServiceNetwork":"100.64.0.0/16"}`
	}
	cfg, _, err := subnet.ParseConfig([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

type harness struct {
	p        *Proxy
	kernel   Kernel
	services chan []etcdwatch.Event[service.Definition]
	configs  chan *subnet.Config
	hook     *logtest.Hook
	cancel   context.CancelFunc
	done     chan error
}

func startProxy(t *testing.T, k Kernel, ct Conntrack, network *subnet.Config) *harness {
	logger, hook := logtest.NewNullLogger()
	h := &harness{
		kernel: k, hook: hook, done: make(chan error, 1),
		services: make(chan []etcdwatch.Event[service.Definition], 10), configs: make(chan *subnet.Config, 1),
	}
	h.p = New(Config{Kernel: k, Network: network, Subnets: testNode.Subnets, ResyncInterval: time.Hour, Conntrack: ct, Log: logrus.NewEntry(logger)})
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.p.Run(ctx, Inputs{Services: h.services, Configs: h.configs}) }()
	t.Cleanup(func() {
		cancel()
		<-h.done
	})
	return h
}

func event(t testing.TB, key, doc string, created int64) etcdwatch.Event[service.Definition] {
	s, err := service.Parse(key, []byte(doc))
	return etcdwatch.Event[service.Definition]{Key: key, Item: service.Definition{Service: s, Err: err}, Created: created}
}

// Nothing is written before the first listing: a weftd that starts while
// etcd is away leaves the rules of the previous one alone.
func TestProxyWritesNothingBeforeTheFirstListing(t *testing.T) {
	k := &fakeKernel{}
	h := startProxy(t, k, nil, testNetwork(t, true))
	h.configs <- testNetwork(t, true)
	time.Sleep(100 * time.Millisecond)
	if _, n, removed := k.last(); n != 0 || removed != 0 {
		t.Fatalf("%d syncs, %d removals before the first listing", n, removed)
	}
	h.services <- nil // an empty listing
	testenv.Eventually(t, 2*time.Second, "a sync", func() (bool, string) {
		st, n, _ := k.last()
		return n == 1 && st.Services == 0, fmt.Sprint(n)
	})
}

func TestProxyRefusesInvalidAndConflictingServices(t *testing.T) {
	k := &fakeKernel{}
	h := startProxy(t, k, nil, testNetwork(t, true))
	h.services <- []etcdwatch.Event[service.Definition]{
		event(t, "default/web", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80}],"endpoints":[{"address":"100.96.1.5"}]}`, 10),
		event(t, "default/a-newer", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80}]}`, 20),
		event(t, "default/outside", `{"vips":["100.65.0.1"],"ports":[{"protocol":"TCP","port":80}]}`, 30),
		event(t, "default/notjson", `{"vips":`, 40),
	}
	testenv.Eventually(t, 2*time.Second, "the status", func() (bool, string) {
		st := h.p.Status()
		return st.Programmed == 1 && st.Endpoints == 1 && len(st.Refused) == 3, fmt.Sprintf("%+v", st)
	})
	st := h.p.Status()
	for i, want := range []string{"default/a-newer: VIP 100.64.0.10 port 80/TCP is already used by default/web", "not valid JSON", "outside the service network"} {
		if !strings.Contains(st.Refused[i].Problem, want) {
			t.Errorf("refused[%d] = %+v; want %q", i, st.Refused[i], want)
		}
	}
	// The same problems on every later sync are not logged again.
	h.services <- []etcdwatch.Event[service.Definition]{event(t, "default/other", `{"vips":["100.64.0.11"],"ports":[{"protocol":"UDP","port":53}]}`, 50)}
	testenv.Eventually(t, 2*time.Second, "the second service", func() (bool, string) {
		return h.p.Status().Programmed == 2, ""
	})
	warnings := 0
	for _, e := range h.hook.AllEntries() {
		if e.Level == logrus.WarnLevel {
			warnings++
		}
	}
	if warnings != 3 {
		t.Errorf("%d warnings for 3 refused services", warnings)
	}
	// Removing the older service lets the newer one have the VIP.
	h.services <- []etcdwatch.Event[service.Definition]{{Key: "default/web", Removed: true}}
	testenv.Eventually(t, 2*time.Second, "default/a-newer to be programmed", func() (bool, string) {
		st := h.p.Status()
		return st.Programmed == 2 && len(st.Refused) == 2, fmt.Sprintf("%+v", st)
	})
}

// A network configuration without service networks turns services off:
// the table is removed.
func TestProxyRemovesTheTableWhenServicesAreTurnedOff(t *testing.T) {
	k := &fakeKernel{}
	h := startProxy(t, k, nil, testNetwork(t, true))
	h.services <- nil
	testenv.Eventually(t, 2*time.Second, "a sync", func() (bool, string) { _, n, _ := k.last(); return n == 1, "" })
	h.configs <- testNetwork(t, false)
	testenv.Eventually(t, 2*time.Second, "the table to be removed", func() (bool, string) {
		_, _, removed := k.last()
		return removed == 1 && !h.p.Status().Enabled, fmt.Sprint(removed)
	})
}

// A UDP client keeps its conntrack entry while it sends; when its
// endpoint goes, the entry goes, and the next datagram finds another.
func TestUDPClientMovesOnWhenItsEndpointGoes(t *testing.T) {
	l := newLab(t)
	for name, ns := range l.eps {
		addr := map[string]string{"ep0": "100.96.1.5:8053", "ep1": "100.96.2.5:8053"}[name]
		var pc net.PacketConn
		if err := testenv.InNamedNetNS(ns.Name, func() (err error) {
			pc, err = net.ListenPacket("udp", addr)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 100)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo([]byte(name), from)
			}
		}()
	}
	ct, err := netlinksafe.NewHandleAt(l.node.Handle(), unix.NETLINK_NETFILTER)
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	h := startProxy(t, l.table, &ct, testNetwork(t, true))
	both := `{"vips":["100.64.0.53"],"ports":[{"protocol":"UDP","port":53,"targetPort":8053}],"endpoints":[{"address":"100.96.1.5"},{"address":"100.96.2.5"}]}`
	h.services <- []etcdwatch.Event[service.Definition]{event(t, "default/dns", both, 1)}
	testenv.Eventually(t, 2*time.Second, "the service", func() (bool, string) { return h.p.Status().Programmed == 1, "" })

	var conn net.Conn
	if err := testenv.InNamedNetNS(l.client.Name, func() (err error) {
		conn, err = net.Dial("udp", "100.64.0.53:53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	askUDP := func() string {
		buf := make([]byte, 100)
		conn.Write([]byte("?"))
		conn.SetReadDeadline(time.Now().Add(time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			return err.Error()
		}
		return string(buf[:n])
	}
	first := askUDP()
	for range 5 {
		if got := askUDP(); got != first {
			t.Fatalf("one UDP flow answered by %s, then %s", first, got)
		}
	}
	other := map[string]string{"ep0": "100.96.2.5", "ep1": "100.96.1.5"}[first]
	if other == "" {
		t.Fatalf("no answer: %s", first)
	}
	h.services <- []etcdwatch.Event[service.Definition]{event(t, "default/dns",
		`{"vips":["100.64.0.53"],"ports":[{"protocol":"UDP","port":53,"targetPort":8053}],"endpoints":[{"address":"`+other+`"}]}`, 1)}
	testenv.Eventually(t, 2*time.Second, "the flow to move", func() (bool, string) {
		got := askUDP()
		return got != first && !strings.Contains(got, "timeout"), got
	})
}

func TestWhichVIPsANodeAdvertises(t *testing.T) {
	parse := func(doc string) *subnet.Config {
		cfg, _, err := subnet.ParseConfig([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	services := []*service.Service{
		svc(t, "default/cluster", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80}],"endpoints":[{"address":"100.96.2.5"}],"communities":["64512:300"]}`),
		svc(t, "default/local", `{"vips":["100.64.0.11"],"ports":[{"protocol":"TCP","port":80}],"trafficPolicy":"Local","endpoints":[{"address":"100.96.1.5"},{"address":"100.96.2.5"}]}`),
		svc(t, "default/elsewhere", `{"vips":["100.64.0.12"],"ports":[{"protocol":"TCP","port":80}],"trafficPolicy":"Local","endpoints":[{"address":"100.96.2.5"},{"address":"100.96.1.6","ready":false}]}`),
		svc(t, "default/quiet", `{"vips":["100.64.0.13"],"ports":[{"protocol":"TCP","port":80}],"advertise":false}`),
	}
	describe := func(vips []bgp.VIP) string {
		var s []string
		for _, v := range vips {
			var comms []string
			for _, c := range v.Communities {
				comms = append(comms, subnet.Community(c).String())
			}
			s = append(s, fmt.Sprintf("%s %v %s", v.Prefix, comms, v.Why))
		}
		return strings.Join(s, "\n")
	}
	p := New(Config{Network: parse(`{"Network":"100.96.0.0/12","ServiceNetwork":"100.64.0.0/16","BGP":{"ServiceCommunities":["64512:200"]}}`), Log: logrus.NewEntry(logrus.New())})
	got := describe(p.vips(services, testNode))
	want := "100.64.0.10/32 [64512:200 64512:300] VIP of default/cluster: traffic policy Cluster\n" +
		"100.64.0.11/32 [64512:200] VIP of default/local: traffic policy Local, 1 ready endpoint(s) on this node"
	if got != want {
		t.Errorf("advertised:\n%s\nwant:\n%s", got, want)
	}
	// With the aggregate, Cluster VIPs go into the service network's route;
	// Local ones stay alone, from the nodes with an endpoint.
	p.network = parse(`{"Network":"100.96.0.0/12","ServiceNetwork":"100.64.0.0/16","BGP":{"AggregateServiceNetwork":true}}`)
	got = describe(p.vips(services, testNode))
	want = "100.64.0.0/16 [] service network (BGP.AggregateServiceNetwork)\n" +
		"100.64.0.11/32 [] VIP of default/local: traffic policy Local, 1 ready endpoint(s) on this node"
	if got != want {
		t.Errorf("aggregate:\n%s\nwant:\n%s", got, want)
	}
	// Off for the cluster: only a service that asks.
	services[3].Advertise = new(bool)
	*services[3].Advertise = true
	p.network = parse(`{"Network":"100.96.0.0/12","ServiceNetwork":"100.64.0.0/16","BGP":{"AdvertiseServiceVIPs":false}}`)
	if got := describe(p.vips(services, testNode)); got != "100.64.0.13/32 [] VIP of default/quiet: traffic policy Cluster" {
		t.Errorf("with AdvertiseServiceVIPs false: %s", got)
	}
}
