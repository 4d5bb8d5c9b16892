package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/internal/testenv"
)

// serveName answers every TCP connection to addr:8080 in namespace ns
// with "name client-address".
func serveName(t *testing.T, ns string, addr netip.Addr, name string) {
	t.Helper()
	serve(listenIn(t, ns, netip.AddrPortFrom(addr, 8080)), func(c net.Conn) {
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		fmt.Fprintf(c, "%s %s\n", name, host)
	})
}

// servePods makes every pod answer on 8080 (IPv4 and, if it has one,
// IPv6) with its name.
func servePods(t *testing.T, c *sandbox.Cluster) {
	t.Helper()
	for _, p := range c.Pods() {
		serveName(t, p.NS, p.IP, p.Name)
		if p.IPv6.IsValid() {
			serveName(t, p.NS, p.IPv6, p.Name)
		}
	}
}

// ask connects from ns to addr and returns who answered and the client
// address it saw.
func ask(ns, addr string) (name, client string, err error) {
	var conn net.Conn
	if err := testenv.InNamedNetNS(ns, func() (err error) {
		conn, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	}); err != nil {
		return "", "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", "", err
	}
	name, client, _ = strings.Cut(strings.TrimSpace(line), " ")
	return name, client, nil
}

// askMany makes n connections and counts who answered and the client
// addresses seen.
func askMany(t *testing.T, ns, addr string, n int) (eps, clients map[string]int) {
	t.Helper()
	eps, clients = map[string]int{}, map[string]int{}
	for i := range n {
		name, client, err := ask(ns, addr)
		if err != nil {
			t.Fatalf("connection %d of %d from %s to %s: %v (answered so far: %v)", i+1, n, ns, addr, err, eps)
		}
		eps[name]++
		clients[client]++
	}
	return eps, clients
}

// weftctl runs weftctl against the cluster and fails the test on an
// error.
func weftctl(t *testing.T, c *sandbox.Cluster, args ...string) string {
	t.Helper()
	out, err := c.Weftctl(context.Background(), args...)
	if err != nil {
		t.Fatalf("weftctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// serviceVIPs returns the VIPs of a service as weftctl reports them.
func serviceVIPs(t *testing.T, c *sandbox.Cluster, name string) []netip.Addr {
	t.Helper()
	var s struct {
		VIPs []netip.Addr `json:"vips"`
	}
	if err := json.Unmarshal([]byte(weftctl(t, c, "service", "get", name)), &s); err != nil {
		t.Fatal(err)
	}
	return s.VIPs
}

// programmed waits until every node has programmed n services with eps
// ready endpoints.
func programmed(t *testing.T, c *sandbox.Cluster, n, eps int) {
	t.Helper()
	for _, node := range c.Nodes {
		testenv.Eventually(t, 10*time.Second, fmt.Sprintf("%s to program %d services with %d endpoints", node.Name, n, eps), func() (bool, string) {
			st, err := c.Status(node)
			if err != nil || st.Services == nil {
				return false, fmt.Sprint(err)
			}
			return st.Services.Programmed == n && st.Services.Endpoints == eps, fmt.Sprintf("%+v", st.Services)
		})
	}
}

func podIPs(c *sandbox.Cluster) (v4 []string) {
	for _, p := range c.Pods() {
		v4 = append(v4, p.IP.String())
	}
	return v4
}

func endpointFlags(ips []string) []string {
	var args []string
	for _, ip := range ips {
		args = append(args, "--endpoint", ip)
	}
	return args
}

// A service with four endpoints on four nodes answers on its VIP from a
// pod on every node and from every node, spreads new connections evenly,
// and answers on its node port on every node from the fabric.
func TestServiceReachableFromEverywhere(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 4})
	addPods(t, c, 1)
	servePods(t, c)
	weftctl(t, c, append([]string{"service", "add", "default/web", "--port", "80:8080", "--node-port", "30080"}, endpointFlags(podIPs(c))...)...)
	vip := serviceVIPs(t, c, "default/web")[0]
	addr := netip.AddrPortFrom(vip, 80).String()
	programmed(t, c, 1, 4)

	for _, p := range c.Pods() {
		if name, _, err := ask(p.NS, addr); err != nil {
			t.Errorf("%s (on %s) cannot reach %s: %v", p.Name, p.Node.Name, addr, err)
		} else {
			t.Logf("%s -> %s answered by %s", p.Name, addr, name)
		}
	}
	for _, n := range c.Nodes {
		if _, _, err := ask(n.NS, addr); err != nil {
			t.Errorf("%s cannot reach %s: %v", n.Name, addr, err)
		}
	}
	eps, _ := askMany(t, c.Pods()[0].NS, addr, 400)
	for _, p := range c.Pods() {
		if share := float64(eps[p.Name]) / 400; share < 0.15 || share > 0.35 {
			t.Errorf("%s got %.0f%% of 400 connections (%v); want 15-35%%", p.Name, 100*share, eps)
		}
	}
	t.Logf("400 connections: %v", eps)
	for _, n := range c.Nodes {
		nodePort := netip.AddrPortFrom(n.IP, 30080).String()
		_, client, err := ask(c.Fabric, nodePort)
		if err != nil {
			t.Errorf("node port %s from the fabric: %v", nodePort, err)
		} else if client == sandbox.FabricIP.String() {
			t.Errorf("node port %s with traffic policy Cluster: the endpoint saw the client's own address %s; the reply would not come back through the node", nodePort, client)
		}
	}

	// What the node says about it.
	st, err := c.Status(c.Nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	if st.Services.LastChange.IsZero() || st.Services.Programmed != 1 || st.Services.Endpoints != 4 {
		t.Errorf("status: %+v", st.Services)
	}
	_, metrics, err := c.Get(c.Nodes[0], "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`weft_services{state="programmed"} 1`, "weft_service_endpoints 4", "weft_service_last_change_timestamp_seconds "} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	out := ipOut(t, c.Nodes[0].NS, testBin(t, "weftctl"), "status")
	if !strings.Contains(out, "1 programmed (4 endpoints), 0 refused") {
		t.Errorf("weftctl status:\n%s", out)
	}
}

// Traffic policy Local: from outside, a node sends a service's traffic
// only to its own endpoints, unmasqueraded; a node without one drops it.
func TestServiceLocalPolicyKeepsTheClientAddress(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2})
	p, err := c.AddPod(c.Nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	servePods(t, c)
	weftctl(t, c, "service", "add", "default/local", "--port", "80:8080", "--node-port", "30081", "--traffic-policy", "Local", "--endpoint", p.IP.String())
	programmed(t, c, 1, 1)
	name, client, err := ask(c.Fabric, netip.AddrPortFrom(c.Nodes[0].IP, 30081).String())
	if err != nil || name != p.Name || client != sandbox.FabricIP.String() {
		t.Errorf("node port on the endpoint's node: %s saw %s (%v); want %s to see the client's own %s", name, client, err, p.Name, sandbox.FabricIP)
	}
	if _, _, err := ask(c.Fabric, netip.AddrPortFrom(c.Nodes[1].IP, 30081).String()); err == nil {
		t.Error("a node without a local endpoint answered on a Local node port")
	}
	// From a pod or a node, a Local service goes to any endpoint.
	vip := serviceVIPs(t, c, "default/local")[0]
	if _, _, err := ask(c.Nodes[1].NS, netip.AddrPortFrom(vip, 80).String()); err != nil {
		t.Errorf("from the other node: %v", err)
	}
}

// Session affinity: a client goes to one endpoint until it has been quiet
// for the timeout.
func TestServiceSessionAffinity(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2})
	addPods(t, c, 1)
	servePods(t, c)
	weftctl(t, c, append([]string{"service", "add", "default/sticky", "--port", "80:8080", "--affinity", "2s"}, endpointFlags(podIPs(c))...)...)
	addr := netip.AddrPortFrom(serviceVIPs(t, c, "default/sticky")[0], 80).String()
	programmed(t, c, 1, 2)
	seen := map[string]bool{}
	for round := 0; round < 8 && len(seen) < 2; round++ {
		eps, _ := askMany(t, c.Nodes[0].NS, addr, 20)
		if len(eps) != 1 {
			t.Fatalf("within the affinity timeout one client went to %v", eps)
		}
		for ep := range eps {
			seen[ep] = true
		}
		time.Sleep(2500 * time.Millisecond)
	}
	if len(seen) != 2 {
		t.Errorf("after 8 quiet spells the client still always went to %v", seen)
	}
}

// An endpoint marked not ready, or removed, gets no new connection a
// second later; a deleted service stops answering and its rules go.
func TestServiceEndpointChanges(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2})
	addPods(t, c, 1)
	servePods(t, c)
	pods := c.Pods()
	weftctl(t, c, append([]string{"service", "add", "default/web", "--port", "80:8080"}, endpointFlags(podIPs(c))...)...)
	addr := netip.AddrPortFrom(serviceVIPs(t, c, "default/web")[0], 80).String()
	programmed(t, c, 1, 2)
	client := c.Nodes[0].NS

	weftctl(t, c, "service", "endpoints", "default/web", pods[0].IP.String(), "--not-ready", pods[1].IP.String())
	time.Sleep(time.Second)
	if eps, _ := askMany(t, client, addr, 40); eps[pods[1].Name] != 0 {
		t.Errorf("1 s after %s was marked not ready: %v", pods[1].Name, eps)
	}
	weftctl(t, c, "service", "endpoints", "default/web", pods[1].IP.String())
	time.Sleep(time.Second)
	if eps, _ := askMany(t, client, addr, 40); eps[pods[0].Name] != 0 {
		t.Errorf("1 s after %s was removed: %v", pods[0].Name, eps)
	}
	weftctl(t, c, "service", "rm", "default/web")
	time.Sleep(time.Second)
	if _, _, err := ask(client, addr); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("1 s after the service was removed: %v; want connection refused", err)
	}
	for _, n := range c.Nodes {
		testenv.Eventually(t, 5*time.Second, n.Name+" to remove the service's rules", func() (bool, string) {
			out := ipOut(t, n.NS, "nft", "list", "table", "inet", "weft-svc")
			return !strings.Contains(out, "default/web"), out
		})
	}
}

// Services keep working while weftd restarts and while etcd is away for
// 30 s, and a weftd that starts while etcd is away leaves the rules of
// the one before in place.
func TestServicesSurviveRestartsAndEtcdOutage(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2})
	addPods(t, c, 1)
	servePods(t, c)
	weftctl(t, c, append([]string{"service", "add", "default/web", "--port", "80:8080", "--node-port", "30080"}, endpointFlags(podIPs(c))...)...)
	addr := netip.AddrPortFrom(serviceVIPs(t, c, "default/web")[0], 80).String()
	programmed(t, c, 1, 2)

	// Probe from a pod on node-1 (VIP) and from the fabric (node port)
	// every 50 ms.
	ctx, cancel := context.WithCancel(context.Background())
	var probes, failures atomic.Int64
	var firstFailure atomic.Value
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			for _, target := range []struct{ ns, addr string }{{c.Pods()[0].NS, addr}, {c.Fabric, netip.AddrPortFrom(c.Nodes[0].IP, 30080).String()}} {
				probes.Add(1)
				if _, _, err := ask(target.ns, target.addr); err != nil {
					failures.Add(1)
					firstFailure.CompareAndSwap(nil, fmt.Sprintf("%s -> %s: %v", target.ns, target.addr, err))
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	n := c.Nodes[0]
	c.StopWeftd(n, syscall.SIGTERM)
	time.Sleep(2 * time.Second)
	if err := c.StartWeftd(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	c.StopEtcd()
	c.StopWeftd(n, syscall.SIGKILL)
	if err := c.StartWeftdAsync(n); err != nil { // cannot get far without etcd
		t.Fatal(err)
	}
	time.Sleep(30 * time.Second)
	if err := c.StartEtcd(context.Background()); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, n.Name+" to be ready again", func() (bool, string) {
		st, err := c.Status(n)
		return err == nil && st.Ready, fmt.Sprint(err)
	})
	programmed(t, c, 1, 2)
	time.Sleep(time.Second)
	cancel()
	<-done
	if failures.Load() > 0 {
		t.Errorf("%d of %d probes failed; the first: %v", failures.Load(), probes.Load(), firstFailure.Load())
	}
	t.Logf("%d probes, %d failed", probes.Load(), failures.Load())
}

// IPv6-only and dual-stack services: VIPs of both families are allocated
// and each reaches the endpoints of its family.
func TestDualStackServices(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2, ipv6: true, netConf: sandbox.NetConf("vxlan", true)})
	addPods(t, c, 1)
	servePods(t, c)
	var eps []string
	for _, p := range c.Pods() {
		eps = append(eps, p.IP.String(), p.IPv6.String())
	}
	weftctl(t, c, append([]string{"service", "add", "default/dual", "--port", "80:8080", "--node-port", "30080"}, endpointFlags(eps)...)...)
	var v6eps []string
	for _, p := range c.Pods() {
		v6eps = append(v6eps, p.IPv6.String())
	}
	weftctl(t, c, append([]string{"service", "add", "default/v6only", "--port", "80:8080", "--vip", "fd64::10"}, endpointFlags(v6eps)...)...)
	programmed(t, c, 2, 6)
	vips := serviceVIPs(t, c, "default/dual")
	if len(vips) != 2 || !vips[0].Is4() || !vips[1].Is6() {
		t.Fatalf("dual-stack VIPs: %v", vips)
	}
	for _, vip := range append(vips, netip.MustParseAddr("fd64::10")) {
		addr := netip.AddrPortFrom(vip, 80).String()
		for _, from := range []string{c.Pods()[0].NS, c.Nodes[1].NS} {
			eps, _ := askMany(t, from, addr, 20)
			if len(eps) != 2 {
				t.Errorf("%s from %s: %v; want both pods", addr, from, eps)
			}
		}
	}
	if _, _, err := ask(c.Fabric, netip.AddrPortFrom(c.Nodes[0].IPv6, 30080).String()); err != nil {
		t.Errorf("IPv6 node port: %v", err)
	}
}

// Definitions written around weftctl (etcdctl) that are malformed,
// invalid or claim another service's VIP are ignored with one log line
// each and shown in the status; the services that were there keep working.
func TestBadServicesWrittenWithEtcdctl(t *testing.T) {
	etcdctl, err := exec.LookPath("etcdctl")
	if err != nil {
		testenv.Unavailable(t, "needs etcdctl (Debian package etcd-client)")
	}
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2})
	addPods(t, c, 1)
	servePods(t, c)
	weftctl(t, c, append([]string{"service", "add", "default/web", "--port", "80:8080", "--vip", "100.64.0.10"}, endpointFlags(podIPs(c))...)...)
	programmed(t, c, 1, 2)
	bad := map[string]string{
		"default/notjson":  `{"vips":["100.64.0.11"`,
		"default/outside":  `{"vips":["100.65.0.1"],"ports":[{"protocol":"TCP","port":80}]}`,
		"default/badport":  `{"vips":["100.64.0.12"],"ports":[{"protocol":"TCP","port":70000}]}`,
		"default/badproto": `{"vips":["100.64.0.13"],"ports":[{"protocol":"ICMP","port":80}]}`,
		"default/badep":    `{"vips":["100.64.0.14"],"ports":[{"protocol":"TCP","port":80}],"endpoints":[{"address":"pod-1"}]}`,
		"default/a-dup":    `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80}],"endpoints":[{"address":"` + c.Pods()[0].IP.String() + `"}]}`,
	}
	for key, value := range bad {
		out, err := exec.Command("ip", "netns", "exec", c.Fabric, etcdctl, "--endpoints", c.EtcdEndpoints(), "put", "/weft/network/services/"+key, value).CombinedOutput()
		if err != nil {
			t.Fatalf("etcdctl put: %v\n%s", err, out)
		}
	}
	for _, n := range c.Nodes {
		testenv.Eventually(t, 10*time.Second, n.Name+" to refuse the bad services", func() (bool, string) {
			st, err := c.Status(n)
			if err != nil || st.Services == nil {
				return false, fmt.Sprint(err)
			}
			return len(st.Services.Refused) == len(bad) && st.Services.Programmed == 1, fmt.Sprintf("%+v", st.Services.Refused)
		})
	}
	st, _ := c.Status(c.Nodes[0])
	for _, r := range st.Services.Refused {
		t.Logf("refused %s: %s", r.Service, r.Problem)
		if r.Service == "default/a-dup" && !strings.Contains(r.Problem, "is already used by default/web") {
			t.Errorf("a-dup: %s", r.Problem)
		}
	}
	// The older service keeps its VIP.
	eps, _ := askMany(t, c.Nodes[0].NS, "100.64.0.10:80", 20)
	if len(eps) != 2 {
		t.Errorf("default/web after a newer service claimed its VIP: %v", eps)
	}
	// One log line per bad definition, and weftd is still running.
	time.Sleep(3 * time.Second) // a few more syncs
	b, _ := os.ReadFile(c.Nodes[0].LogFile)
	log := string(b)
	for key := range bad {
		n := 0
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, key) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s is on %d log lines; want one", key, n)
		}
	}
	if c.Nodes[0].WeftdPID() == 0 {
		t.Error("weftd is not running")
	}
}
