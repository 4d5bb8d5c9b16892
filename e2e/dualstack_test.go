package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/sandbox"
)

// requireMeshV6 checks that every pod pings every pod on other nodes over
// IPv6.
func requireMeshV6(t *testing.T, c *sandbox.Cluster) {
	t.Helper()
	for _, a := range c.Pods() {
		for _, b := range c.Pods() {
			if a.Node == b.Node {
				continue
			}
			if !b.IPv6.IsValid() {
				t.Fatalf("%s has no IPv6 address", b.Name)
			}
			if err := ping(a, b.IPv6.String(), 10); err != nil {
				t.Error(err)
			}
		}
	}
}

func TestDualStack(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			conf := fmt.Sprintf(`{"Network":"100.96.0.0/12","EnableIPv6":true,"IPv6Network":"fd96::/48","Backend":{"Type":%q}}`, backend)
			c := startCluster(t, clusterOpts{backend: backend, nodes: 3, ipv6: true, netConf: conf})
			addPods(t, c, 1)
			requireMesh(t, c)
			requireMeshV6(t, c)
			pods := c.Pods()
			if from := transfer(t, pods[0], pods[2], 1<<20); from != pods[0].IP.String() {
				t.Errorf("IPv4 connection from %s", from)
			}
			n1 := c.Nodes[0]
			env, _ := os.ReadFile(n1.SubnetFile)
			for _, want := range []string{"FLANNEL_IPV6_NETWORK=fd96::/48", "FLANNEL_IPV6_SUBNET=fd96:0:"} {
				if !strings.Contains(string(env), want) {
					t.Errorf("subnet.env lacks %q:\n%s", want, env)
				}
			}
			if backend == "vxlan" && !strings.Contains(string(env), "FLANNEL_MTU=1430") {
				t.Errorf("dual-stack vxlan pods need the IPv6 tunnel's MTU (1500-70):\n%s", env)
			}
			leases, _ := c.Weftctl(context.Background(), "leases")
			if strings.Count(leases, "fd96:0:") != 3 || strings.Count(leases, "fd18::") != 3 {
				t.Errorf("leases lack the IPv6 subnets and addresses:\n%s", leases)
			}
			routes := ipOut(t, n1.NS, "ip", "-6", "route", "show", "proto", "87")
			if strings.Count(strings.TrimSpace(routes), "\n")+1 != 2 {
				t.Errorf("node-1 IPv6 routes:\n%s", routes)
			}
			if backend == "vxlan" && strings.Count(routes, "dev weft-v6.1") != 2 {
				t.Errorf("IPv6 routes not through weft-v6.1:\n%s", routes)
			}
		})
	}
}

func TestIPv6Only(t *testing.T) {
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			conf := fmt.Sprintf(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd96::/48","Backend":{"Type":%q}}`, backend)
			c := startCluster(t, clusterOpts{backend: backend, nodes: 3, ipv6: true, netConf: conf})
			addPods(t, c, 1)
			requireMeshV6(t, c)
			for _, p := range c.Pods() {
				if p.IP.Is4() {
					t.Errorf("%s got an IPv4 address %s on an IPv6-only network", p.Name, p.IP)
				}
			}
			leases, _ := c.Weftctl(context.Background(), "leases")
			if strings.Contains(leases, "100.96.") {
				t.Errorf("IPv4 subnets leased on an IPv6-only network:\n%s", leases)
			}
		})
	}
}
