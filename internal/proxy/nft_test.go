package proxy

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/service"
)

// lab is a node namespace with the service table, a client on the fabric
// (198.18.0.2) and two endpoint namespaces: ep0 (100.96.1.5, this node's
// subnet) and ep1 (100.96.2.5, as if on another node). Each endpoint
// answers on TCP 8080 with its name and the client address it saw.
type lab struct {
	node, client *testenv.NetNS
	eps          map[string]*testenv.NetNS
	table        *Table
}

func newLab(t *testing.T) *lab {
	l := &lab{node: testenv.NewNetNS(t), client: testenv.NewNetNS(t), eps: map[string]*testenv.NetNS{}}
	l.link(t, l.client, "c0", "198.18.0.1/24", "198.18.0.2/24")
	for i, name := range []string{"ep0", "ep1"} {
		n := testenv.NewNetNS(t)
		l.eps[name] = n
		l.link(t, n, name, fmt.Sprintf("100.96.%d.1/24", i+1), fmt.Sprintf("100.96.%d.5/24", i+1))
		addr := fmt.Sprintf("100.96.%d.5:8080", i+1)
		serve(t, n, addr, name)
	}
	// The node reaches VIPs through its default route, as under
	// kube-proxy; the client reaches them through the node.
	run(t, "ip", "-n", l.node.Name, "route", "add", "default", "via", "198.18.0.2")
	run(t, "ip", "netns", "exec", l.node.Name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	l.table = NewTable(BufferedConn(int(l.node.Fd())))
	return l
}

// link joins other to the node with a veth: nodeAddr on the node's end,
// addr on other's (its default route points to the node).
func (l *lab) link(t *testing.T, other *testenv.NetNS, name, nodeAddr, addr string) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(other.Fd()))}
	if err := l.node.Netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "-n", l.node.Name, "addr", "add", nodeAddr, "dev", name)
	run(t, "ip", "-n", l.node.Name, "link", "set", name, "up")
	run(t, "ip", "-n", other.Name, "addr", "add", addr, "dev", "eth0")
	run(t, "ip", "-n", other.Name, "link", "set", "eth0", "up")
	run(t, "ip", "-n", other.Name, "route", "add", "default", "via", strings.Split(nodeAddr, "/")[0])
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// serve answers every connection to addr in ns with "name client-address".
func serve(t *testing.T, ns *testenv.NetNS, addr, name string) {
	var ln net.Listener
	if err := testenv.InNamedNetNS(ns.Name, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintf(c, "%s %s\n", name, host)
			c.Close()
		}
	}()
}

// ask connects from ns to addr and returns the endpoint's answer, or the
// error.
func ask(ns *testenv.NetNS, addr string) (name, client string, err error) {
	var c net.Conn
	if err := testenv.InNamedNetNS(ns.Name, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	}); err != nil {
		return "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", err
	}
	name, client, _ = strings.Cut(strings.TrimSpace(line), " ")
	return name, client, nil
}

// spread makes n connections and counts the endpoints and client
// addresses seen.
func spread(t *testing.T, ns *testenv.NetNS, addr string, n int) (eps, clients map[string]int) {
	t.Helper()
	eps, clients = map[string]int{}, map[string]int{}
	for i := range n {
		name, client, err := ask(ns, addr)
		if err != nil {
			t.Fatalf("connection %d of %d to %s: %v (so far %v)", i+1, n, addr, err, eps)
		}
		eps[name]++
		clients[client]++
	}
	return eps, clients
}

func (l *lab) sync(t *testing.T, svcs ...*service.Service) {
	t.Helper()
	admitted, refused := service.Admit(svcs)
	if len(refused) > 0 {
		t.Fatal(refused)
	}
	if _, err := l.table.Sync(Build(admitted, testNode), testNode.Subnets); err != nil {
		t.Fatal(err)
	}
}

func (l *lab) chains(t *testing.T) int {
	t.Helper()
	c, err := BufferedConn(int(l.node.Fd()))()
	if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ch := range chains {
		if ch.Table.Name == TableName {
			n++
		}
	}
	return n
}

const web = `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80,"targetPort":8080,"nodePort":30080}],"endpoints":[{"address":"100.96.1.5"},{"address":"100.96.2.5"}]}`

func TestServiceTrafficThroughTheTable(t *testing.T) {
	l := newLab(t)
	local := svc(t, "default/local", `{"vips":["100.64.0.11"],"ports":[{"protocol":"TCP","port":80,"targetPort":8080,"nodePort":30081}],"trafficPolicy":"Local",
		"endpoints":[{"address":"100.96.1.5"},{"address":"100.96.2.5"}]}`)
	l.sync(t, svc(t, "default/web", web), local)

	eps, clients := spread(t, l.client, "100.64.0.10:80", 100)
	if eps["ep0"] < 20 || eps["ep1"] < 20 {
		t.Errorf("100 connections from outside to the VIP: %v; want both endpoints", eps)
	}
	if clients["198.18.0.2"] > 0 {
		t.Errorf("Cluster policy: a connection from outside the pod network was not masqueraded: %v", clients)
	}
	if eps, _ := spread(t, l.node, "100.64.0.10:80", 40); eps["ep0"] == 0 || eps["ep1"] == 0 {
		t.Errorf("from the node itself: %v", eps)
	}
	// ep0 is a pod of this node: it reaches itself too (masqueraded, or
	// its reply would not come back through the node's NAT).
	if eps, clients := spread(t, l.eps["ep0"], "100.64.0.10:80", 40); eps["ep0"] == 0 || eps["ep1"] == 0 || clients["100.96.1.5"] > eps["ep1"] {
		t.Errorf("from a pod (and back to itself): endpoints %v, clients seen %v", eps, clients)
	}
	if eps, _ := spread(t, l.client, "198.18.0.1:30080", 40); eps["ep0"] == 0 || eps["ep1"] == 0 {
		t.Errorf("node port: %v", eps)
	}
	// Local: from outside, only the local endpoint, and it sees the client.
	for _, addr := range []string{"100.64.0.11:80", "198.18.0.1:30081"} {
		eps, clients := spread(t, l.client, addr, 30)
		if eps["ep0"] != 30 || clients["198.18.0.2"] != 30 {
			t.Errorf("Local policy via %s: endpoints %v, clients seen %v; want ep0 only, seeing 198.18.0.2", addr, eps, clients)
		}
	}
	// No such port, no such VIP: refused at once.
	for _, addr := range []string{"100.64.0.10:81", "100.64.0.99:80"} {
		start := time.Now()
		if _, _, err := ask(l.client, addr); err == nil || !strings.Contains(err.Error(), "refused") || time.Since(start) > time.Second {
			t.Errorf("%s: %v after %v; want connection refused at once", addr, err, time.Since(start))
		}
	}
}

func TestEndpointChangeIsAddOnlyAndCleanedUp(t *testing.T) {
	l := newLab(t)
	l.sync(t, svc(t, "default/web", web))
	before := l.chains(t)
	l.sync(t, svc(t, "default/web", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80,"targetPort":8080}],"endpoints":[{"address":"100.96.2.5"}]}`))
	if eps, _ := spread(t, l.client, "100.64.0.10:80", 20); eps["ep1"] != 20 {
		t.Errorf("after the change: %v; want ep1 only", eps)
	}
	if !l.table.Pending() {
		t.Fatal("nothing left to collect after a change")
	}
	time.Sleep(staleAfter)
	if err := l.table.Collect(); err != nil {
		t.Fatal(err)
	}
	if after := l.chains(t); after >= before {
		t.Errorf("chains: %d before, %d after the collection; the old ones were not removed", before, after)
	}
	if eps, _ := spread(t, l.client, "100.64.0.10:80", 10); eps["ep1"] != 10 {
		t.Errorf("after the collection: %v", eps)
	}
	// The service goes: its VIP is refused, its chains go.
	l.sync(t)
	time.Sleep(staleAfter)
	if err := l.table.Collect(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ask(l.client, "100.64.0.10:80"); err == nil {
		t.Error("a deleted service still answers")
	}
	if n := l.chains(t); n != len(fixedChains) {
		t.Errorf("%d chains left; want the %d fixed ones", n, len(fixedChains))
	}
}

// A new weftd finds the table of the one before: it rewrites it in one
// transaction, so traffic never meets an empty table, and removes what is
// no longer defined.
func TestRestartReplacesTheTableInPlace(t *testing.T) {
	l := newLab(t)
	l.sync(t, svc(t, "default/web", web), svc(t, "default/gone", `{"vips":["100.64.0.20"],"ports":[{"protocol":"TCP","port":80,"targetPort":8080}],"endpoints":[{"address":"100.96.1.5"}]}`))
	l.table = NewTable(BufferedConn(int(l.node.Fd())))
	l.sync(t, svc(t, "default/web", web))
	if eps, _ := spread(t, l.client, "100.64.0.10:80", 20); eps["ep0"] == 0 || eps["ep1"] == 0 {
		t.Errorf("after the restart: %v", eps)
	}
	if _, _, err := ask(l.client, "100.64.0.20:80"); err == nil {
		t.Error("a service deleted while weftd was down still answers")
	}
	time.Sleep(staleAfter)
	if err := l.table.Collect(); err != nil {
		t.Fatal(err)
	}
	if out := run(t, "ip", "netns", "exec", l.node.Name, "nft", "list", "table", "inet", TableName); strings.Contains(out, "default/gone") {
		t.Errorf("chains of a deleted service are left:\n%s", out)
	}
	if err := l.table.Remove(); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "netns", "exec", l.node.Name, "nft", "list", "table", "inet", TableName).CombinedOutput(); err == nil {
		t.Errorf("the table is still there after Remove:\n%s", out)
	}
}

func TestSessionAffinity(t *testing.T) {
	l := newLab(t)
	l.sync(t, svc(t, "default/web", `{"vips":["100.64.0.10"],"ports":[{"protocol":"TCP","port":80,"targetPort":8080}],"affinityTimeoutSeconds":2,
		"endpoints":[{"address":"100.96.1.5"},{"address":"100.96.2.5"}]}`))
	// Each expiry picks anew at random: twelve rounds miss one of the two
	// endpoints with a chance of 1 in 2,048 (six rounds: 1 in 32, seen).
	seen := map[string]bool{}
	for round := 0; round < 12 && len(seen) < 2; round++ {
		eps, _ := spread(t, l.client, "100.64.0.10:80", 10)
		if len(eps) != 1 {
			t.Fatalf("one client went to %v within the affinity timeout", eps)
		}
		for ep := range eps {
			seen[ep] = true
		}
		time.Sleep(2500 * time.Millisecond) // the choice expires
	}
	if len(seen) != 2 {
		t.Errorf("after 12 expiries the client always went to %v", seen)
	}
}

// What an operator or another tool does to the table behind weft's back is
// found by Check and undone by the next Sync after Resync.
func TestCheckFindsDriftAndSyncRepairsIt(t *testing.T) {
	l := newLab(t)
	st := Build([]*service.Service{svc(t, "default/web", web)}, testNode)
	if _, err := l.table.Sync(st, testNode.Subnets); err != nil {
		t.Fatal(err)
	}
	if drift, err := l.table.Check(); drift != "" || err != nil {
		t.Fatalf("right after a sync: %q, %v", drift, err)
	}
	for _, tc := range []struct {
		damage []string
		want   string
	}{
		{[]string{"nft", "delete", "element", "inet", TableName, "service-ips-v4", "{ 100.64.0.10 . tcp . 80 }"}, "map service-ips-v4 has 0 elements, not 1"},
		{[]string{"nft", "delete", "table", "inet", TableName}, "is missing"},
		{[]string{"nft", "add", "chain", "inet", TableName, "intruder"}, "chain intruder is not weft's"},
	} {
		run(t, append([]string{"ip", "netns", "exec", l.node.Name}, tc.damage...)...)
		drift, err := l.table.Check()
		if err != nil || !strings.Contains(drift, tc.want) {
			t.Errorf("after %v: %q, %v; want %q", tc.damage, drift, err, tc.want)
		}
		l.table.Resync()
		if _, err := l.table.Sync(st, testNode.Subnets); err != nil {
			t.Fatal(err)
		}
		if eps, _ := spread(t, l.client, "100.64.0.10:80", 10); len(eps) == 0 {
			t.Errorf("after repairing %v: %v", tc.damage, eps)
		}
		if drift, err := l.table.Check(); drift != "" || err != nil {
			t.Errorf("after repairing %v: %q, %v", tc.damage, drift, err)
		}
	}
}
