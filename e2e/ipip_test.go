package e2e

import (
	"os"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/testenv"
)

// requireIPIP fails (skips outside CI) on a kernel without IP-in-IP. On
// such a machine make test leaves these tests to the VM harness (make
// test-vm), which boots a kernel that has it.
func requireIPIP(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/sys/module/ipip"); err != nil {
		testenv.Unavailable(t, "this kernel has no IPIP; run the test in the VM: make test-vm")
	}
}

func TestIPIP(t *testing.T) {
	requireIPIP(t)
	c := startCluster(t, clusterOpts{backend: "ipip", nodes: 3})
	addPods(t, c, 1)
	requireMesh(t, c)
	pods := c.Pods()
	if from := transfer(t, pods[0], pods[2], 1<<20); from != pods[0].IP.String() {
		t.Errorf("connection arrived from %s, want %s", from, pods[0].IP)
	}
	for _, n := range c.Nodes {
		routes := ipOut(t, n.NS, "ip", "route", "show", "proto", "87")
		if strings.Count(routes, "dev weft.ipip") != 2 || !strings.Contains(routes, "onlink") {
			t.Errorf("%s routes:\n%s", n.Name, routes)
		}
		dev := ipOut(t, n.NS, "ip", "-d", "link", "show", "weft.ipip")
		if !strings.Contains(dev, "mtu 1480") || !strings.Contains(dev, "ipip") || !strings.Contains(dev, "local "+n.IP.String()) {
			t.Errorf("%s device:\n%s", n.Name, dev)
		}
	}
}
