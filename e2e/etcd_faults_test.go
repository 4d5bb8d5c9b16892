package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/internal/testenv"
)

// requireReady checks every node still reports ready.
func requireReady(t *testing.T, c *sandbox.Cluster, nodes []*sandbox.Node) {
	t.Helper()
	for _, n := range nodes {
		if st, err := c.Status(n); err != nil || !st.Ready {
			t.Errorf("%s is not ready: %+v, %v", n.Name, st, err)
		}
	}
}

// TestEtcdDownFor60Seconds: pod traffic flows the whole time, routes stay,
// the daemons reconnect, keep their subnets, and see a node that joins.
func TestEtcdDownFor60Seconds(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 3})
	addPods(t, c, 1)
	requireMesh(t, c)
	subnets := map[string]netip.Prefix{}
	for _, n := range c.Nodes {
		subnets[n.Name], _ = n.Subnet()
	}
	routes := ipOut(t, c.Nodes[0].NS, "ip", "route", "show", "proto", "87")
	ps := pingAll(t, c)

	c.StopEtcd()
	time.Sleep(60 * time.Second)
	requireReady(t, c, c.Nodes)
	if after := ipOut(t, c.Nodes[0].NS, "ip", "route", "show", "proto", "87"); after != routes {
		t.Errorf("routes changed while etcd was down:\n%s\n%s", routes, after)
	}
	if err := c.StartEtcd(context.Background()); err != nil {
		t.Fatal(err)
	}
	addNodeWithPod(t, c, "a node joins after the outage")
	requireMesh(t, c)
	requireNoOutage(t, ps)
	for _, n := range c.Nodes[:3] {
		if sn, _ := n.Subnet(); sn != subnets[n.Name] {
			t.Errorf("%s changed subnet from %s to %s", n.Name, subnets[n.Name], sn)
		}
	}
	out, _ := c.Weftctl(context.Background(), "leases")
	if strings.Count(out, "node-") != 4 {
		t.Errorf("leases after the outage:\n%s", out)
	}
}

// TestEtcdClusterLosesAMemberThenQuorum: with three members, losing one
// changes nothing (a node can still join); losing quorum stops changes but
// not traffic; restoring them lets the cluster grow again.
func TestEtcdClusterLosesAMemberThenQuorum(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 3, etcdMembers: 3})
	addPods(t, c, 1)
	requireMesh(t, c)
	ps := pingAll(t, c)
	ctx := context.Background()

	c.StopEtcdMember(0) // the first endpoint every node lists
	addNodeWithPod(t, c, "a node joins with one member down")
	requireMesh(t, c)

	c.StopEtcdMember(1) // quorum lost
	time.Sleep(15 * time.Second)
	requireReady(t, c, c.Nodes)

	if err := c.StartEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	addNodeWithPod(t, c, "a node joins after quorum is back")
	requireMesh(t, c)
	requireNoOutage(t, ps)
}

// TestEtcdPartitionOfOneNode: node-1 cannot reach etcd (nftables drop in
// its namespace) while node-4 joins; traffic between the others and node-1
// keeps flowing, and once healed node-1 picks up node-4.
func TestEtcdPartitionOfOneNode(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 3})
	addPods(t, c, 1)
	requireMesh(t, c)
	ps := pingAll(t, c)
	n1 := c.Nodes[0]
	nft := func(args ...string) { ipOut(t, n1.NS, append([]string{"nft"}, args...)...) }
	nft("add", "table", "inet", "partition")
	nft("add", "chain", "inet", "partition", "out", "{ type filter hook output priority 0 ; }")
	nft("add", "rule", "inet", "partition", "out", "ip", "daddr", sandbox.FabricIP.String(), "tcp", "dport", "2379", "drop")
	// Both ways: with only the output dropped, etcd's watch events would
	// still arrive.
	nft("add", "chain", "inet", "partition", "in", "{ type filter hook input priority 0 ; }")
	nft("add", "rule", "inet", "partition", "in", "ip", "saddr", sandbox.FabricIP.String(), "tcp", "sport", "2379", "drop")

	p4 := addNodeWithPod(t, c, "node-4 joins during the partition")
	n4 := p4.Node
	if err := ping(c.Nodes[1].Pods[0], p4.IP.String(), 10); err != nil {
		t.Errorf("node-2 cannot reach the new node: %v", err)
	}
	sn4, _ := n4.Subnet()
	time.Sleep(3 * time.Second)
	if out := ipOut(t, n1.NS, "ip", "route", "show", sn4.String()); strings.TrimSpace(out) != "" {
		t.Errorf("the partitioned node knows the new node already?\n%s", out)
	}
	requireReady(t, c, c.Nodes[:3])

	nft("delete", "table", "inet", "partition")
	testenv.Eventually(t, 90*time.Second, "node-1 to pick up node-4 after the partition heals", func() (bool, string) {
		out := ipOut(t, n1.NS, "ip", "route", "show", sn4.String())
		return strings.Contains(out, "dev weft.1"), fmt.Sprint(out)
	})
	requireMesh(t, c)
	requireNoOutage(t, ps)
}

// TestHundredDaemonsAtOnce: 100 nodes booting together against one etcd get
// 100 distinct subnets and none exits.
func TestHundredDaemonsAtOnce(t *testing.T) {
	c := startCluster(t, clusterOpts{backend: "host-gw", nodes: 0})
	start := time.Now()
	nodes, err := c.AddNodes(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("100 daemons ready %v after starting together", time.Since(start).Round(time.Millisecond))
	seen := map[netip.Prefix]string{}
	for _, n := range nodes {
		sn, err := n.Subnet()
		if err != nil {
			t.Fatal(err)
		}
		if other, dup := seen[sn]; dup {
			t.Errorf("%s and %s both have %s", other, n.Name, sn)
		}
		seen[sn] = n.Name
	}
	testenv.Eventually(t, 60*time.Second, "every node to program its 99 peers", func() (bool, string) {
		for _, n := range nodes {
			st, err := c.Status(n)
			if err != nil || st.Peers.Programmed != 99 {
				return false, fmt.Sprintf("%s: %+v %v", n.Name, st, err)
			}
		}
		return true, ""
	})
}
