package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/internal/testenv"
)

// twoSegments starts nodes 1 and 2 on one underlay segment and nodes 3 and
// 4 on another, joined by the fabric acting as a router.
func twoSegments(t *testing.T, conf string) *sandbox.Cluster {
	t.Helper()
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 0})
	if err := c.SetNetConf(context.Background(), conf); err != nil {
		t.Fatal(err)
	}
	for _, seg := range []int{0, 0, 1, 1} {
		if _, err := c.AddNodeOn(context.Background(), seg); err != nil {
			t.Fatal(err)
		}
	}
	addPods(t, c, 1)
	return c
}

// requireRoutes checks node n's weft routes: direct (via the peer's
// address on eth0) to peers on its segment, through dev to the others.
func requireRoutes(t *testing.T, c *sandbox.Cluster, n *sandbox.Node, dev string) {
	t.Helper()
	testenv.Eventually(t, 15*time.Second, n.Name+" routes peers on its segment directly and the rest through "+dev, func() (bool, string) {
		routes := ipOut(t, n.NS, "ip", "route", "show", "proto", "87")
		for _, p := range c.Nodes {
			if p == n {
				continue
			}
			sn, _ := p.Subnet()
			want := fmt.Sprintf("%s via %s dev eth0", sn, p.IP)
			if p.Segment != n.Segment {
				want = fmt.Sprintf("%s via ", sn) // then "… dev <tunnel> onlink"
			}
			line := ""
			for _, l := range strings.Split(routes, "\n") {
				if strings.HasPrefix(l, sn.String()+" ") {
					line = l
				}
			}
			if !strings.HasPrefix(line, want) || p.Segment != n.Segment && !strings.Contains(line, "dev "+dev) {
				return false, routes
			}
		}
		return true, ""
	})
}

func testDirectRouting(t *testing.T, backend, dev string) {
	c := twoSegments(t, fmt.Sprintf(`{"Network":"100.96.0.0/12","Backend":{"Type":%q,"DirectRouting":true}}`, backend))
	for _, n := range c.Nodes {
		requireRoutes(t, c, n, dev)
	}
	requireMesh(t, c)
	n1 := c.Nodes[0]
	st, err := c.Status(n1)
	if err != nil || st.Peers.Direct != 1 || st.Peers.Programmed != 3 {
		t.Errorf("node-1 status: %+v, %v; want 1 direct of 3", st.Peers, err)
	}
	if _, body, _ := c.Get(n1, "/metrics"); !strings.Contains(body, `weft_peers{state="direct"} 1`) || !strings.Contains(body, `weft_peers{state="encapsulated"} 2`) {
		t.Errorf("metrics lack the direct/encapsulated split")
	}

	// The underlay changes: node-2 is now reached through a router. The
	// decision follows without a restart, and back.
	n2 := c.Nodes[1]
	sn2, _ := n2.Subnet()
	ipOut(t, n1.NS, "ip", "route", "add", n2.IP.String()+"/32", "via", sandbox.FabricIP.String())
	testenv.Eventually(t, 10*time.Second, "node-1 encapsulates to node-2 once a router is in between", func() (bool, string) {
		out := ipOut(t, n1.NS, "ip", "route", "show", sn2.String())
		return strings.Contains(out, "dev "+dev), out
	})
	ipOut(t, n1.NS, "ip", "route", "del", n2.IP.String()+"/32")
	testenv.Eventually(t, 10*time.Second, "node-1 routes node-2 directly again", func() (bool, string) {
		out := ipOut(t, n1.NS, "ip", "route", "show", sn2.String())
		return strings.Contains(out, "via "+n2.IP.String()+" dev eth0"), out
	})
	requireMesh(t, c)
}

func TestDirectRoutingVXLAN(t *testing.T) { testDirectRouting(t, "vxlan", "weft.1") }

func TestIPIPDirectRouting(t *testing.T) {
	requireIPIP(t)
	testDirectRouting(t, "ipip", "weft.ipip")
}

// TestHostGWAcrossSegments shows host-gw's limit: peers behind the router
// are reported unreachable instead of given a broken route.
func TestHostGWAcrossSegments(t *testing.T) {
	c := twoSegments(t, `{"Network":"100.96.0.0/12","Backend":{"Type":"host-gw"}}`)
	n1 := c.Nodes[0]
	testenv.Eventually(t, 10*time.Second, "node-1 reports two unreachable peers", func() (bool, string) {
		st, err := c.Status(n1)
		return err == nil && st.Peers.Unreachable == 2 && st.Peers.Programmed == 1, fmt.Sprint(st)
	})
	routes := ipOut(t, n1.NS, "ip", "route", "show", "proto", "87")
	if strings.Count(strings.TrimSpace(routes), "\n") != 0 {
		t.Errorf("node-1 has routes to unreachable peers:\n%s", routes)
	}
	if err := ping(n1.Pods[0], c.Nodes[1].Pods[0].IP.String(), 10); err != nil {
		t.Error(err)
	}
}
