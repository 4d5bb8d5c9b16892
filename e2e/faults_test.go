package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
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
