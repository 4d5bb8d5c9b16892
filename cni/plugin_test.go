package cni_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weft-net/weft/internal/testenv"
)

// node is a namespace standing in for a node's own, with a subnet.env.
type node struct {
	ns      *testenv.NetNS
	cni     *libcni.CNIConfig
	dir     string
	envFile string
}

func newNode(t *testing.T, subnetEnv string) *node {
	t.Helper()
	n := &node{ns: testenv.NewNetNS(t), dir: t.TempDir()}
	n.envFile = filepath.Join(n.dir, "subnet.env")
	if subnetEnv != "" {
		os.WriteFile(n.envFile, []byte(subnetEnv), 0o644)
	}
	// libcni's cache (results of ADD, read by DEL and GC) in the test's own
	// directory, not the machine's /var/lib/cni.
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(testenv.Binary(t, "weft"))}, filepath.Join(n.dir, "cache"), nil)
	return n
}

const defaultEnv = "FLANNEL_NETWORK=100.96.0.0/12\nFLANNEL_SUBNET=100.96.5.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"

func (n *node) conf(t *testing.T, cniVersion string, extra string) *libcni.NetworkConfigList {
	t.Helper()
	js := fmt.Sprintf(`{"cniVersion":%q,"name":"weft","plugins":[{"type":"weft","subnetFile":%q,"dataDir":%q%s}]}`,
		cniVersion, n.envFile, filepath.Join(n.dir, "ipam"), extra)
	l, err := libcni.ConfListFromBytes([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// in runs f with the calling thread in the node's namespace, so that the
// plugin libcni starts runs there too.
func (n *node) in(t *testing.T, f func() error) error {
	t.Helper()
	return n.ns.Do(func(ns.NetNS) error { return f() })
}

func (n *node) add(t *testing.T, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (*current.Result, error) {
	var res types.Result
	err := n.in(t, func() (err error) {
		res, err = n.cni.AddNetworkList(context.Background(), list, rt)
		return err
	})
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

func (n *node) del(t *testing.T, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return n.in(t, func() error { return n.cni.DelNetworkList(context.Background(), list, rt) })
}

func (n *node) ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.ns.Name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func container(t *testing.T, id string) (*testenv.NetNS, *libcni.RuntimeConf) {
	c := testenv.NewNetNS(t)
	return c, &libcni.RuntimeConf{ContainerID: id, NetNS: c.Path(), IfName: "eth0"}
}

func TestAddCheckDel(t *testing.T) {
	n := newNode(t, defaultEnv)
	list := n.conf(t, "1.1.0", "")
	c, rt := container(t, "c1")

	res, err := n.add(t, list, rt)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.IPs) != 1 || res.IPs[0].Address.String() != "100.96.5.2/24" || res.IPs[0].Gateway.String() != "100.96.5.1" {
		t.Fatalf("result IPs = %v", res.IPs)
	}
	if len(res.Interfaces) != 3 || res.Interfaces[2].Sandbox != c.Path() || *res.IPs[0].Interface != 2 {
		t.Fatalf("result interfaces = %v", res.Interfaces)
	}
	eth0, _ := exec.Command("ip", "-n", c.Name, "addr", "show", "eth0").CombinedOutput()
	for _, want := range []string{"mtu 1450", "inet 100.96.5.2/24"} {
		if !strings.Contains(string(eth0), want) {
			t.Errorf("container eth0 lacks %q:\n%s", want, eth0)
		}
	}
	routes, _ := exec.Command("ip", "-n", c.Name, "route").CombinedOutput()
	for _, want := range []string{"default via 100.96.5.1 dev eth0", "100.96.0.0/12 via 100.96.5.1 dev eth0"} {
		if !strings.Contains(string(routes), want) {
			t.Errorf("container routes lack %q:\n%s", want, routes)
		}
	}
	if fi, err := os.Stat(filepath.Join(n.dir, "ipam", "weft")); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("the address store is not private: %v %v", fi.Mode(), err)
	}
	if br := n.ip(t, "addr", "show", "cni0"); !strings.Contains(br, "inet 100.96.5.1/24") || !strings.Contains(br, "mtu 1450") {
		t.Errorf("cni0:\n%s", br)
	}
	hostVeth := res.Interfaces[1].Name
	if link := n.ip(t, "-d", "link", "show", hostVeth); !strings.Contains(link, "master cni0") || !strings.Contains(link, "hairpin on") {
		t.Errorf("host veth:\n%s", link)
	}

	// CHECK passes, and fails once the address is gone.
	if err := n.in(t, func() error { return n.cni.CheckNetworkList(context.Background(), list, rt) }); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	exec.Command("ip", "-n", c.Name, "addr", "flush", "dev", "eth0").Run()
	if err := n.in(t, func() error { return n.cni.CheckNetworkList(context.Background(), list, rt) }); err == nil || !strings.Contains(err.Error(), "lacks address 100.96.5.2/24") {
		t.Errorf("CHECK after flushing the address = %v", err)
	}

	// A repeated ADD keeps the address.
	if again, err := n.add(t, list, rt); err != nil || again.IPs[0].Address.String() != "100.96.5.2/24" {
		t.Fatalf("repeated ADD = %v, %v", again, err)
	}

	if err := n.del(t, list, rt); err != nil {
		t.Fatal(err)
	}
	if err := n.del(t, list, rt); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	if _, err := os.Stat(filepath.Join(n.dir, "ipam", "weft", "100.96.5.2")); !os.IsNotExist(err) {
		t.Error("address not released by DEL")
	}
	if out, _ := exec.Command("ip", "-n", c.Name, "link", "show", "eth0").CombinedOutput(); !strings.Contains(string(out), "does not exist") {
		t.Errorf("container eth0 still there:\n%s", out)
	}
	// DEL for a namespace that no longer exists.
	rt.NetNS = "/run/netns/weft-gone"
	if err := n.del(t, list, rt); err != nil {
		t.Errorf("DEL with a vanished namespace: %v", err)
	}
}

func TestOlderSpecVersions(t *testing.T) {
	n := newNode(t, defaultEnv)
	for i, v := range []string{"0.3.1", "0.4.0", "1.0.0"} {
		list := n.conf(t, v, "")
		_, rt := container(t, fmt.Sprintf("old-%d", i))
		var res types.Result
		err := n.in(t, func() (err error) { res, err = n.cni.AddNetworkList(context.Background(), list, rt); return err })
		if err != nil {
			t.Fatalf("ADD with cniVersion %s: %v", v, err)
		}
		if res.Version() != v {
			t.Errorf("result version %s, want %s", res.Version(), v)
		}
		if err := n.del(t, list, rt); err != nil {
			t.Fatalf("DEL with cniVersion %s: %v", v, err)
		}
	}
	info, err := n.cni.GetVersionInfo(context.Background(), "weft")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(info.SupportedVersions(), ","); !strings.Contains(got, "1.1.0") || !strings.Contains(got, "0.3.1") {
		t.Errorf("supported versions %s", got)
	}
}

func TestFiftyConcurrentAddsGetDistinctAddresses(t *testing.T) {
	n := newNode(t, defaultEnv)
	list := n.conf(t, "1.1.0", "")
	const count = 50
	rts := make([]*libcni.RuntimeConf, count)
	for i := range rts {
		_, rts[i] = container(t, fmt.Sprintf("c%02d", i))
	}
	addrs := make([]string, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := n.add(t, list, rts[i])
			errs[i] = err
			if err == nil {
				addrs[i] = res.IPs[0].Address.IP.String()
			}
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range count {
		if errs[i] != nil {
			t.Errorf("ADD %d: %v", i, errs[i])
			continue
		}
		if j, dup := seen[addrs[i]]; dup {
			t.Errorf("containers %d and %d both got %s", j, i, addrs[i])
		}
		seen[addrs[i]] = i
	}
	if links := strings.Count(n.ip(t, "-o", "link", "show", "master", "cni0"), "\n"); links != count {
		t.Errorf("%d veths on cni0, want %d", links, count)
	}
}

func TestGCReleasesVanishedContainers(t *testing.T) {
	n := newNode(t, defaultEnv)
	list := n.conf(t, "1.1.0", "")
	for i := range 3 {
		_, rt := container(t, fmt.Sprintf("gc%d", i))
		if _, err := n.add(t, list, rt); err != nil {
			t.Fatal(err)
		}
	}
	valid := []types.GCAttachment{{ContainerID: "gc0", IfName: "eth0"}}
	if err := n.in(t, func() error {
		return n.cni.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: valid})
	}); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(n.dir, "ipam", "weft", "100.96.5.*"))
	if len(files) != 1 {
		t.Fatalf("after GC %d allocations remain, want 1: %v", len(files), files)
	}
	if b, _ := os.ReadFile(files[0]); !strings.HasPrefix(string(b), "gc0") {
		t.Errorf("GC kept %s (%q), want gc0's", files[0], b)
	}
}

func TestStatus(t *testing.T) {
	n := newNode(t, "")
	list := n.conf(t, "1.1.0", "")
	err := n.in(t, func() error { return n.cni.GetStatusNetworkList(context.Background(), list) })
	var cniErr *types.Error
	if !asCNIError(err, &cniErr) || cniErr.Code != types.ErrPluginNotAvailable || !strings.Contains(cniErr.Details, "is weftd running") {
		t.Fatalf("STATUS without subnet.env = %v", err)
	}
	os.WriteFile(n.envFile, []byte(defaultEnv), 0o644)
	if err := n.in(t, func() error { return n.cni.GetStatusNetworkList(context.Background(), list) }); err != nil {
		t.Fatalf("STATUS with subnet.env = %v", err)
	}
}

func TestBadInputLeavesNothingHalfMade(t *testing.T) {
	small := "FLANNEL_NETWORK=100.96.0.0/12\nFLANNEL_SUBNET=100.96.5.1/29\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
	n := newNode(t, small)
	list := n.conf(t, "1.1.0", "")
	allocations := func() int {
		files, _ := filepath.Glob(filepath.Join(n.dir, "ipam", "weft", "100.96.*"))
		return len(files)
	}
	// A /29 holds .2 to .6 besides the gateway .1: five containers.
	for i := range 5 {
		_, rt := container(t, fmt.Sprintf("full%d", i))
		if _, err := n.add(t, list, rt); err != nil {
			t.Fatalf("ADD %d: %v", i, err)
		}
	}
	veths := strings.Count(n.ip(t, "-o", "link", "show", "master", "cni0"), "\n")
	_, rt := container(t, "one-too-many")
	_, err := n.add(t, list, rt)
	if err == nil || !strings.Contains(err.Error(), "no free address left in 100.96.5.0/29") {
		t.Errorf("ADD to a full subnet = %v", err)
	}
	// A namespace that does not exist.
	_, err = n.add(t, list, &libcni.RuntimeConf{ContainerID: "ghost", NetNS: "/run/netns/weft-no-such-ns", IfName: "eth0"})
	var cniErr *types.Error
	if !asCNIError(err, &cniErr) || cniErr.Code != types.ErrInvalidNetNS {
		t.Errorf("ADD into a missing namespace = %v", err)
	}
	if got := allocations(); got != 5 {
		t.Errorf("failed ADDs left %d allocations, want 5", got)
	}
	if got := strings.Count(n.ip(t, "-o", "link", "show", "master", "cni0"), "\n"); got != veths {
		t.Errorf("failed ADDs left veths: %d, want %d", got, veths)
	}

	// No subnet.env: try again later, with what to do.
	os.Remove(n.envFile)
	_, err = n.add(t, list, rt)
	if !asCNIError(err, &cniErr) || cniErr.Code != types.ErrTryAgainLater || !strings.Contains(cniErr.Details, "is weftd running on this node") {
		t.Errorf("ADD without subnet.env = %v", err)
	}
}

func TestMalformedStdinAndMissingEnv(t *testing.T) {
	testenv.RequireRoot(t)
	bin := testenv.Binary(t, "weft")
	run := func(stdin string, env ...string) (string, int) {
		cmd := exec.Command(bin)
		cmd.Env = env
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.Output()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		return string(out), code
	}
	base := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=x", "CNI_NETNS=/run/netns/none", "CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin"}
	tests := []struct {
		stdin string
		env   []string
		want  string
	}{
		{`{"cniVersion":"1.0.0","name":"weft","type":"weft"`, base, "unexpected end of JSON input"},
		{`{"cniVersion":"1.0.0","type":"weft"}`, base, `missing network name`},
		{`{"cniVersion":"1.0.0","name":"weft","type":"weft","mtu":10}`, base, `\"mtu\" 10 is out of range`},
		{`{"cniVersion":"1.0.0","name":"weft","type":"weft"}`, []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=x", "CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin"}, "required env variables [CNI_NETNS] missing"},
	}
	for _, tt := range tests {
		out, code := run(tt.stdin, tt.env...)
		var e types.Error
		json.Unmarshal([]byte(out), &e)
		if code == 0 || !strings.Contains(out, tt.want) {
			t.Errorf("stdin %s: exit %d, output %s; want an error with %q", tt.stdin, code, out, tt.want)
		}
	}
}

func asCNIError(err error, target **types.Error) bool { return errors.As(err, target) }
