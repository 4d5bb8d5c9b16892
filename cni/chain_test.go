package cni_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/weft-net/weft/internal/testenv"
)

// TestChainsIntoPortmapAndBandwidth runs weft with the real portmap and
// bandwidth plugins after it, as a kubelet conflist does.
func TestChainsIntoPortmapAndBandwidth(t *testing.T) {
	n := newNode(t, defaultEnv)
	portmap := testenv.ToolBinary(t, "github.com/containernetworking/plugins/plugins/meta/portmap")
	bandwidth := testenv.ToolBinary(t, "github.com/containernetworking/plugins/plugins/meta/bandwidth")
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(testenv.Binary(t, "weft")), filepath.Dir(portmap), filepath.Dir(bandwidth)}, filepath.Join(n.dir, "cache"), nil)
	js := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"weft","plugins":[
		{"type":"weft","subnetFile":%q,"dataDir":%q},
		{"type":"portmap","capabilities":{"portMappings":true},"backend":"nftables"},
		{"type":"bandwidth","capabilities":{"bandwidth":true}}]}`, n.envFile, filepath.Join(n.dir, "ipam"))
	list, err := libcni.ConfListFromBytes([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	_, rt := container(t, "chained")
	rt.CapabilityArgs = map[string]any{
		"portMappings": []map[string]any{{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}},
		"bandwidth":    map[string]any{"ingressRate": 8000000, "ingressBurst": 80000, "egressRate": 8000000, "egressBurst": 80000},
	}
	res, err := n.add(t, list, rt)
	if err != nil {
		t.Fatalf("chained ADD: %v", err)
	}
	ruleset, _ := exec.Command("ip", "netns", "exec", n.ns.Name, "nft", "list", "ruleset").CombinedOutput()
	if !strings.Contains(string(ruleset), "18080") || !strings.Contains(string(ruleset), res.IPs[0].Address.IP.String()) {
		t.Errorf("portmap did not map 18080 to %s:\n%s", res.IPs[0].Address.IP, ruleset)
	}
	qdisc := n.ip(t, "link", "show")
	tc, _ := exec.Command("tc", "-n", n.ns.Name, "qdisc", "show").CombinedOutput()
	if !strings.Contains(string(tc), "tbf") {
		t.Errorf("bandwidth set no tbf qdisc:\n%s\n%s", tc, qdisc)
	}
	if err := n.in(t, func() error { return n.cni.CheckNetworkList(context.Background(), list, rt) }); err != nil {
		t.Errorf("chained CHECK: %v", err)
	}
	if err := n.del(t, list, rt); err != nil {
		t.Fatalf("chained DEL: %v", err)
	}
	ruleset, _ = exec.Command("ip", "netns", "exec", n.ns.Name, "nft", "list", "ruleset").CombinedOutput()
	if strings.Contains(string(ruleset), "18080") {
		t.Errorf("port mapping left after DEL:\n%s", ruleset)
	}
}
