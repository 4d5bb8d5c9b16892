package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/subnet"
)

func etcdClient(t *testing.T, c *sandbox.Cluster) *clientv3.Client {
	t.Helper()
	cli, err := c.EtcdClient()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func leaseKey(t *testing.T, n *sandbox.Node) string {
	t.Helper()
	sn, err := n.Subnet()
	if err != nil {
		t.Fatal(err)
	}
	return "/weft/network/subnets/" + subnet.MakeKey(sn, netipPrefixZero)
}

func countInLog(t *testing.T, n *sandbox.Node, msg string) int {
	t.Helper()
	b, _ := os.ReadFile(n.LogFile)
	return strings.Count(string(b), msg)
}

// logTail is the end of n's weftd log, for a failure message.
func logTail(n *sandbox.Node) string {
	b, _ := os.ReadFile(n.LogFile)
	return "log:\n" + testenv.Tail(b, 2000)
}

func TestOwnLeaseDeletedByHandIsRecreated(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2})
	addPods(t, c, 1)
	requireMesh(t, c)
	cli := etcdClient(t, c)
	n1 := c.Nodes[0]
	key := leaseKey(t, n1)
	ctx := context.Background()
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "node-1's lease to be re-created with the same subnet", func() (bool, string) {
		resp, err := cli.Get(ctx, key)
		return err == nil && len(resp.Kvs) == 1 && strings.Contains(string(resp.Kvs[0].Value), `"Node":"node-1"`), fmt.Sprint(resp)
	})
	if countInLog(t, n1, "this node's lease was deleted from etcd; re-creating it") != 1 {
		t.Error("the deletion is not logged once")
	}
	requireMesh(t, c)
}

func TestMalformedLeasesAreIgnored(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2})
	addPods(t, c, 1)
	requireMesh(t, c)
	cli := etcdClient(t, c)
	ctx := context.Background()
	n1Subnet, _ := c.Nodes[0].Subnet()
	n1Key := subnet.MakeKey(n1Subnet, netipPrefixZero)
	mac := `{"VNI":1,"VtepMAC":"0e:00:00:00:00:99"}`
	bad := map[string]string{
		"100.96.200.0-24": `{"PublicIP":"198.18.0.200",`, // invalid JSON
		"100.96.201.0-24": `{"PublicIP":"198.18.0.201","BackendType":"bogus"}`,
		"10.9.0.0-24":     `{"PublicIP":"198.18.0.202","BackendType":"vxlan","BackendData":` + mac + `}`, // outside the network
		// Same IPv4 subnet as another lease (dual-stack keys in an IPv4 network).
		"100.96.203.0-24&fd96:0:0:1::-64": `{"PublicIP":"198.18.0.203","BackendType":"vxlan","BackendData":` + mac + `}`,
		"100.96.203.0-24&fd96:0:0:2::-64": `{"PublicIP":"198.18.0.204","BackendType":"vxlan","BackendData":` + mac + `}`,
		// Claims node-1's subnet.
		n1Key + "&fd96:0:0:3::-64": `{"PublicIP":"198.18.0.205","BackendType":"vxlan","BackendData":` + mac + `}`,
		"100.96.206.0-24":          `{"PublicIP":"198.18.0.206","Node":"` + strings.Repeat("x", 100<<10) + `"}`, // huge
		"100.96.207.0-24":          `{"PublicIP":"127.0.0.1","BackendType":"host-gw"}`,                          // loopback: host-gw cannot reach it
	}
	for k, v := range bad {
		if _, err := cli.Put(ctx, "/weft/network/subnets/"+k, v); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * time.Second) // a few resyncs
	for _, n := range c.Nodes {
		if st, err := c.Status(n); err != nil || !st.Ready {
			t.Fatalf("%s after malformed leases: %+v, %v", n.Name, st, err)
		}
		routes := ipOut(t, n.NS, "ip", "route", "show", "proto", "87")
		for _, sn := range []string{"100.96.200.", "100.96.201.", "10.9.0.", "100.96.206.", "100.96.207.", "100.96.203.0/24 via 100.96.203.0 dev weft.1 onlink\n100.96.203"} {
			if strings.Contains(routes, sn) {
				t.Errorf("%s routes a malformed lease (%s):\n%s", n.Name, sn, routes)
			}
		}
		if strings.Count(routes, "100.96.203.0/24") > 1 {
			t.Errorf("%s routes a subnet twice:\n%s", n.Name, routes)
		}
		if got := strings.Count(ipOut(t, n.NS, "ip", "route", "show", n1Subnet.String()), n1Subnet.String()); n == c.Nodes[1] && got != 1 {
			t.Errorf("%s: node-1's subnet routed %d times", n.Name, got)
		}
		log, _ := os.ReadFile(n.LogFile)
		for _, k := range []string{"100.96.200.0-24", "10.9.0.0-24", "100.96.206.0-24"} {
			lines := 0
			for _, l := range strings.Split(string(log), "\n") {
				if strings.Contains(l, k) {
					lines++
				}
			}
			if lines != 1 {
				t.Errorf("%s logged %s on %d lines, want one", n.Name, k, lines)
			}
		}
		if !strings.Contains(string(log), "refusing lease") {
			t.Errorf("%s did not log refusing the overlapping lease", n.Name)
		}
	}
	requireMesh(t, c)
}

func TestInterfaceDownUpAndAddressChange(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "host-gw", nodes: 2})
	addPods(t, c, 1)
	requireMesh(t, c)
	n1 := c.Nodes[0]

	// Down and up: the kernel drops the routes through eth0; weft puts them back.
	ipOut(t, n1.NS, "ip", "link", "set", "eth0", "down")
	time.Sleep(2 * time.Second)
	ipOut(t, n1.NS, "ip", "link", "set", "eth0", "up")
	requireMesh(t, c)

	// A new address: the lease and every peer follow.
	ipOut(t, n1.NS, "ip", "addr", "del", n1.IP.String()+"/24", "dev", "eth0")
	ipOut(t, n1.NS, "ip", "addr", "add", "198.18.0.101/24", "dev", "eth0")
	testenv.Eventually(t, 15*time.Second, "the lease to announce the new address", func() (bool, string) {
		out, _ := c.Weftctl(context.Background(), "leases")
		return strings.Contains(out, "198.18.0.101") && !strings.Contains(out, n1.IP.String()+" "), out
	})
	testenv.Eventually(t, 15*time.Second, "node-2 to route node-1's subnet via the new address", func() (bool, string) {
		out := ipOut(t, c.Nodes[1].NS, "ip", "route", "show", "proto", "87")
		return strings.Contains(out, "via 198.18.0.101 dev eth0"), out
	})
	requireMesh(t, c)
	var st struct{ PublicIP string }
	if s, err := c.Status(n1); err == nil {
		b, _ := json.Marshal(s)
		json.Unmarshal(b, &st)
	}
	if st.PublicIP != "198.18.0.101" {
		t.Errorf("status public IP %q", st.PublicIP)
	}
}

// An MTU-only change of the underlay reaches the tunnel device, subnet.env
// and so the pods created afterwards, which then fit the tunnel.
func TestUnderlayMTUChangeReachesSubnetEnvAndNewPods(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2})
	addPods(t, c, 1)
	requireMesh(t, c)
	n1 := c.Nodes[0]

	ipOut(t, n1.NS, "ip", "link", "set", "eth0", "mtu", "1400")
	testenv.Eventually(t, 15*time.Second, "weft.1 to follow the underlay's MTU", func() (bool, string) {
		out := ipOut(t, n1.NS, "ip", "link", "show", "weft.1")
		return strings.Contains(out, "mtu 1350 "), out
	})
	testenv.Eventually(t, 15*time.Second, "subnet.env to say the new pod MTU", func() (bool, string) {
		b, _ := os.ReadFile(n1.SubnetFile)
		return strings.Contains(string(b), "FLANNEL_MTU=1350\n"), string(b)
	})
	if st, err := c.Status(n1); err != nil || st.MTU != 1350 {
		t.Errorf("status MTU = %v (%v), want 1350", st, err)
	}
	pod, err := c.AddPod(n1)
	if err != nil {
		t.Fatal(err)
	}
	if out := ipOut(t, pod.NS, "ip", "link", "show", "eth0"); !strings.Contains(out, "mtu 1350 ") {
		t.Errorf("a pod created after the change has:\n%s\nwant mtu 1350", out)
	}
	// Full-size segments from the new pod cross the smaller tunnel.
	if from := transfer(t, pod, c.Nodes[1].Pods[0], 1<<20); from != pod.IP.String() {
		t.Errorf("connection arrived from %s, want %s", from, pod.IP)
	}
}

var netipPrefixZero = netip.Prefix{}

// Leases that ask to be reached where no peer can be (#17: this node's own
// address, etcd's, multicast, broadcast, a pod address; the all-zero, broadcast,
// multicast or this node's own VTEP MAC) are refused with one line each
// naming the reason; the good peers are programmed, no sync fails, and
// nothing of them reaches the kernel.
func TestHostileLeasesAreRefused(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2})
	addPods(t, c, 1)
	requireMesh(t, c)
	n1 := c.Nodes[0]
	st, err := c.Status(n1)
	if err != nil {
		t.Fatal(err)
	}
	cli := etcdClient(t, c)
	ctx := context.Background()
	ownMAC := ipOut(t, n1.NS, "cat", "/sys/class/net/weft.1/address")
	lease := func(ip, mac string) string {
		return `{"PublicIP":"` + ip + `","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"` + mac + `"}}`
	}
	hostile := map[string]struct{ value, why string }{
		"100.96.210.0-24": {lease(n1.IP.String(), "0e:00:00:00:01:01"), "is this node's own"},
		"100.96.211.0-24": {lease("224.0.0.1", "0e:00:00:00:01:02"), "is a multicast address"},
		"100.96.212.0-24": {lease("255.255.255.255", "0e:00:00:00:01:03"), "is the broadcast address"},
		"100.96.213.0-24": {lease("198.18.0.255", "0e:00:00:00:01:04"), "broadcast address of the underlay network 198.18.0.0/24"},
		"100.96.214.0-24": {lease("100.96.9.9", "0e:00:00:00:01:05"), "is a pod address"},
		"100.96.215.0-24": {lease("198.18.0.215", "00:00:00:00:00:00"), "is all zeros"},
		"100.96.216.0-24": {lease("198.18.0.216", "ff:ff:ff:ff:ff:ff"), "is a multicast or broadcast address"},
		"100.96.217.0-24": {lease("198.18.0.217", "01:00:5e:00:00:01"), "is a multicast or broadcast address"},
		"100.96.218.0-24": {lease("198.18.0.218", strings.TrimSpace(ownMAC)), "is this node's own"},
		"100.96.219.0-24": {lease("198.18.0.254", "0e:00:00:00:01:09"), "is etcd's (--etcd-endpoints)"},
	}
	for k, h := range hostile {
		if _, err := cli.Put(ctx, "/weft/network/subnets/"+k, h.value); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(5 * time.Second) // two resyncs
	after, err := c.Status(n1)
	if err != nil || !after.Ready {
		t.Fatalf("%s after hostile leases: %+v, %v", n1.Name, after, err)
	}
	if after.SyncErrors != st.SyncErrors {
		t.Errorf("sync errors went from %d to %d: one bad peer fails the sync", st.SyncErrors, after.SyncErrors)
	}
	routes := ipOut(t, n1.NS, "ip", "route", "show", "proto", "87")
	neigh := ipOut(t, n1.NS, "ip", "neigh", "show", "dev", "weft.1")
	log, _ := os.ReadFile(n1.LogFile)
	for k, h := range hostile {
		prefix := strings.TrimSuffix(k, "0-24")
		if strings.Contains(routes, prefix) || strings.Contains(neigh, prefix) {
			t.Errorf("%s is programmed:\n%s\n%s", k, routes, neigh)
		}
		lines := 0
		for _, l := range strings.Split(string(log), "\n") {
			if strings.Contains(l, "peer="+k) && strings.Contains(l, "refusing lease") && strings.Contains(l, h.why) {
				lines++
			}
		}
		if lines != 1 {
			t.Errorf("%s: %d log lines refusing it because it %s; want one", k, lines, h.why)
		}
	}
	if strings.Contains(neigh, "00:00:00:00:00:00") {
		t.Errorf("an all-zero MAC reached the kernel:\n%s", neigh)
	}
	// node-2 refuses the copy of node-1's VTEP MAC too: node-1's lease is
	// older, and keeps node-2's one FDB entry for that MAC.
	n1Key := strings.TrimPrefix(leaseKey(t, n1), "/weft/network/subnets/")
	if n := countInLog(t, c.Nodes[1], "refusing lease: its VtepMAC "+strings.TrimSpace(ownMAC)+" is already used by "+n1Key+" at "+n1.IP.String()); n != 1 {
		t.Errorf("node-2 refused the copy of node-1's VTEP MAC %d times, want once:\n%s", n, logTail(c.Nodes[1]))
	}
	requireMesh(t, c)
}

// A second node started with the name of a running one (a cloned image)
// does not take its lease: it says another node uses the name, in the log
// and in its status, and is not ready; the first node keeps its lease.
func TestDuplicateNodeNameDoesNotShareASubnet(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2})
	addPods(t, c, 1)
	requireMesh(t, c)
	n1 := c.Nodes[0]
	before, _ := n1.Subnet()
	clone, err := c.PrepareNode(0)
	if err != nil {
		t.Fatal(err)
	}
	clone.Args = []string{"--node-name", n1.Name}
	if err := c.StartWeftdAsync(clone); err != nil {
		t.Fatal(err)
	}
	want := "another node, at " + n1.IP.String() + ", holds a live lease"
	testenv.Eventually(t, 20*time.Second, "the clone to say the name is in use", func() (bool, string) {
		st, err := c.Status(clone)
		return err == nil && !st.Ready && strings.Contains(st.NotReady, want), fmt.Sprintf("%+v %v", st, err)
	})
	if countInLog(t, clone, want) == 0 {
		t.Error("the clone's log does not say the name is in use")
	}
	out, _ := c.Weftctl(context.Background(), "leases", "-o", "json")
	if !strings.Contains(out, `"publicIP": "`+n1.IP.String()+`"`) || strings.Contains(out, `"publicIP": "`+clone.IP.String()+`"`) {
		t.Errorf("leases after the clone started:\n%s", out)
	}
	if after, _ := n1.Subnet(); after != before {
		t.Errorf("%s's subnet went from %s to %s", n1.Name, before, after)
	}
	requireMesh(t, c)
}

// A weftd that cannot write subnet.env (the path is a directory) says
// why, exits 1 and gives back the lease it had just taken: no orphan
// lease in etcd.
func TestUnwritableSubnetFileLeavesNoLease(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 1})
	n, err := c.PrepareNode(0)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	n.Args = []string{"--subnet-file", dir}
	if err := c.StartWeftdAsync(n); err != nil {
		t.Fatal(err)
	}
	want := "writing " + dir + ": it is a directory; the subnet file must be a file (--subnet-file)"
	testenv.Eventually(t, 20*time.Second, "weftd to say subnet.env is a directory", func() (bool, string) {
		return countInLog(t, n, want) > 0, logTail(n)
	})
	if code := c.StopWeftd(n, syscall.SIGTERM); code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	out, err := c.Weftctl(context.Background(), "leases", "-o", "json")
	if err != nil || strings.Contains(out, `"publicIP": "`+n.IP.String()+`"`) {
		t.Errorf("leases after weftd gave up (%v):\n%s", err, out)
	}
}

// A weftd stopped (SIGSTOP) past its lease TTL says what happened when it
// runs again, and keeps its subnet.
func TestStoppedPastTheTTLSaysTheLeaseExpired(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2, leaseTTL: 6 * time.Second})
	addPods(t, c, 1)
	requireMesh(t, c)
	n2 := c.Nodes[1]
	before, _ := n2.Subnet()
	pid := n2.WeftdPID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Second) // past the TTL
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	want := "etcd lease expired: this weftd did not renew it within its TTL (it was stopped or cut off from etcd); re-creating the same subnet"
	testenv.Eventually(t, 20*time.Second, "weftd to say its lease expired", func() (bool, string) {
		return countInLog(t, n2, want) > 0, logTail(n2)
	})
	if after, _ := n2.Subnet(); after != before {
		t.Errorf("subnet went from %s to %s", before, after)
	}
	requireMesh(t, c)
}

// Narrowing SubnetMin/SubnetMax so that a node's subnet falls outside
// (#17): weftctl refuses unless given --force and names the lease; running
// nodes apply it (it bounds only new subnets) and the table status shows
// no problem; a restarted node keeps its route to the node outside, and
// that node, restarted with its lease gone, keeps its subnet and holds one
// lease.
func TestNarrowedSubnetRangeKeepsEveryNode(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 3})
	addPods(t, c, 1)
	requireMesh(t, c)
	ctx := context.Background()
	n1, n3 := c.Nodes[0], c.Nodes[2]
	sn3, _ := n3.Subnet()
	lo, hi := "100.104.0.0", "100.111.255.0"
	if sn3.Addr().Compare(netip.MustParseAddr(lo)) >= 0 {
		lo, hi = "100.96.0.0", "100.103.255.0"
	}
	conf := `{"Network":"100.96.0.0/12","SubnetMin":"` + lo + `","SubnetMax":"` + hi + `","Backend":{"Type":"vxlan"}}`
	err := c.SetNetConf(ctx, conf)
	if err == nil || !strings.Contains(err.Error(), sn3.String()+" (node-3)") || !strings.Contains(err.Error(), "give --force to write it anyway; nothing was written") {
		t.Fatalf("config set without --force: %v", err)
	}
	if err := c.SetNetConf(ctx, conf, "--force"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "node-1 to take the new range", func() (bool, string) {
		return countInLog(t, n1, "the range of new subnets changed") > 0, logTail(n1)
	})
	if st, err := c.Status(n1); err != nil || st.ConfigIssue != "" || !st.Ready {
		t.Errorf("node-1 after the change: %+v %v", st, err)
	}
	// node-1 restarted still programs node-3.
	c.StopWeftd(n1, syscall.SIGTERM)
	if err := c.StartWeftd(ctx, n1); err != nil {
		t.Fatal(err)
	}
	if countInLog(t, n1, "ignoring invalid lease") > 0 {
		t.Errorf("node-1 ignored a lease after its restart:\n%s", logTail(n1))
	}
	requireMesh(t, c)
	// node-3 restarted after its lease was lost keeps its subnet.
	c.StopWeftd(n3, syscall.SIGTERM)
	cli := etcdClient(t, c)
	if _, err := cli.Delete(ctx, leaseKey(t, n3)); err != nil {
		t.Fatal(err)
	}
	if err := c.StartWeftd(ctx, n3); err != nil {
		t.Fatal(err)
	}
	if after, _ := n3.Subnet(); after != sn3 {
		t.Errorf("node-3 moved from %s to %s", sn3, after)
	}
	out, _ := c.Weftctl(ctx, "leases")
	if n := strings.Count(out, n3.IP.String()); n != 1 {
		t.Errorf("node-3 holds %d leases:\n%s", n, out)
	}
	requireMesh(t, c)
}

// A peer whose route the kernel refuses (its IPv6 address is one node-1
// holds on lo, as an anycast or loopback address: "Gateway can not be a
// local address") does not keep the other peers out; node-1 names it, and
// once syncs have failed for three resyncs /readyz says it is not ready,
// until the cause is gone.
func TestAPeerTheKernelRefusesMakesTheNodeUnready(t *testing.T) {
	conf := `{"Network":"100.96.0.0/12","EnableIPv6":true,"IPv6Network":"fd96::/48","Backend":{"Type":"host-gw"}}`
	c := startCluster(t, clusterOpts{backend: "host-gw", nodes: 2, ipv6: true, netConf: conf})
	addPods(t, c, 1)
	requireMesh(t, c)
	n1 := c.Nodes[0]
	ctx := context.Background()
	ipOut(t, n1.NS, "ip", "addr", "add", "fd18::77/128", "dev", "lo")
	cli := etcdClient(t, c)
	key := "100.96.230.0-24&fd96:0:0:e6::-64"
	if _, err := cli.Put(ctx, "/weft/network/subnets/"+key, `{"PublicIP":"198.18.0.77","PublicIPv6":"fd18::77","BackendType":"host-gw"}`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, "node-1 to say it is not ready because syncs fail", func() (bool, string) {
		code, body, err := c.Get(n1, "/readyz")
		return err == nil && code == 503 && strings.Contains(body, "every sync has failed for") && strings.Contains(body, key),
			fmt.Sprintf("%d %q %v", code, body, err)
	})
	st, err := c.Status(n1)
	if err != nil || !strings.Contains(st.LastSyncErr, "adding route fd96:0:0:e6::/64 via fd18::77") {
		t.Errorf("status: %+v %v", st, err)
	}
	requireMesh(t, c) // the other peer is programmed
	ipOut(t, n1.NS, "ip", "addr", "del", "fd18::77/128", "dev", "lo")
	testenv.Eventually(t, 20*time.Second, "node-1 to be ready again", func() (bool, string) {
		code, body, err := c.Get(n1, "/readyz")
		return err == nil && code == 200, fmt.Sprintf("%d %q %v", code, body, err)
	})
	if routes := ipOut(t, n1.NS, "ip", "-6", "route", "show", "fd96:0:0:e6::/64"); !strings.Contains(routes, "via fd18::77") {
		t.Errorf("the peer is not programmed once the kernel takes it: %q", routes)
	}
}
