package cni_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weft-net/weft/internal/testenv"
)

// shippedConflist is dist/cni/10-weft.conflist as a node has it, except
// that weft's subnetFile and dataDir point into the test node's directory.
// Nothing else changes: the version and the chained plugins are the ones
// that ship.
func (n *node) shippedConflist(t *testing.T) *libcni.NetworkConfigList {
	t.Helper()
	data, err := os.ReadFile("../dist/cni/10-weft.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatalf("dist/cni/10-weft.conflist: %v", err)
	}
	plugins, _ := raw["plugins"].([]any)
	weft, _ := plugins[0].(map[string]any)
	if weft["type"] != "weft" {
		t.Fatalf("dist/cni/10-weft.conflist: the first plugin is %v, want weft", weft["type"])
	}
	weft["subnetFile"] = n.envFile
	weft["dataDir"] = filepath.Join(n.dir, "ipam")
	data, _ = json.Marshal(raw)
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("dist/cni/10-weft.conflist: %v", err)
	}
	return list
}

// TestShippedConflistReachesGCAndStatus runs dist/cni/10-weft.conflist as
// a runtime does, through libcni with the built weft plugin and the portmap
// and bandwidth plugins it chains, and shows that STATUS and GC reach weft:
// libcni sends neither for a list older than CNI 1.1.0.
func TestShippedConflistReachesGCAndStatus(t *testing.T) {
	n := newNode(t, "")
	list := n.shippedConflist(t)
	if ok, err := version.GreaterThanOrEqualTo(list.CNIVersion, "1.1.0"); err != nil || !ok {
		t.Fatalf("dist/cni/10-weft.conflist has cniVersion %s: libcni sends STATUS and GC only from 1.1.0", list.CNIVersion)
	}
	paths := []string{filepath.Dir(testenv.Binary(t, "weft"))}
	for _, p := range list.Plugins[1:] {
		pkg := "github.com/containernetworking/plugins/plugins/meta/" + p.Network.Type
		paths = append(paths, filepath.Dir(testenv.ToolBinary(t, pkg)))
	}
	// A cache of its own: libcni's GC first DELs every cached attachment of
	// the network that is not valid, and the default /var/lib/cni is
	// shared with every other test (and runtime) on this machine.
	n.cni = libcni.NewCNIConfigWithCacheDir(paths, t.TempDir(), nil)
	ctx := context.Background()

	// STATUS: weft is not available until weftd has written subnet.env.
	err := n.in(t, func() error { return n.cni.GetStatusNetworkList(ctx, list) })
	var cniErr *types.Error
	if !asCNIError(err, &cniErr) || cniErr.Code != types.ErrPluginNotAvailable || !strings.Contains(cniErr.Details, "is weftd running") {
		t.Fatalf("STATUS without subnet.env = %v, want weft's error %d (plugin not available)", err, types.ErrPluginNotAvailable)
	}
	if err := os.WriteFile(n.envFile, []byte(defaultEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n.in(t, func() error { return n.cni.GetStatusNetworkList(ctx, list) }); err != nil {
		t.Fatalf("STATUS with subnet.env = %v", err)
	}

	// Two containers through the whole chain.
	addrs := map[string]string{}
	for _, id := range []string{"kept", "gone"} {
		_, rt := container(t, id)
		res, err := n.add(t, list, rt)
		if err != nil {
			t.Fatalf("ADD %s through the shipped conflist: %v", id, err)
		}
		addrs[id] = res.IPs[0].Address.IP.String()
	}
	allocated := func(id string) bool {
		_, err := os.Stat(filepath.Join(n.dir, "ipam", "weft", addrs[id]))
		return err == nil
	}

	// GC from a runtime that has no cached attachments (it lost its cache,
	// or never saw "gone"): libcni has nothing to DEL, so only weft's GC
	// can release the address of the container missing from the valid ones.
	forgetful := libcni.NewCNIConfigWithCacheDir(paths, t.TempDir(), nil)
	valid := []types.GCAttachment{{ContainerID: "kept", IfName: "eth0"}}
	if err := n.in(t, func() error {
		return forgetful.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid})
	}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if allocated("gone") {
		t.Errorf("GC left %s allocated to the container that is gone", addrs["gone"])
	}
	if !allocated("kept") {
		t.Errorf("GC released %s of the container that is still there", addrs["kept"])
	}
	if t.Failed() {
		files, _ := filepath.Glob(filepath.Join(n.dir, "ipam", "weft", "*"))
		t.Logf("allocations after GC: %v", files)
	}
}
