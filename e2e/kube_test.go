package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/weft-net/weft/internal/sandbox"
	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/subnet/kube"
)

// requireKube fails (under CI) or skips a test without the Kubernetes
// control plane binaries (make kube-bins).
func requireKube(t *testing.T) {
	t.Helper()
	dir := filepath.Dir(testenv.Binary(t, "weftd"))
	for _, b := range []string{"kube-apiserver", "kube-controller-manager"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			testenv.Unavailable(t, "needs %s in %s: make kube-bins", b, dir)
		}
	}
}

func kubeClient(t *testing.T, c *sandbox.Cluster) kubernetes.Interface {
	t.Helper()
	cs, err := c.KubeClient()
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// Nodes in Kubernetes mode take their subnets from the podCIDRs
// kube-controller-manager allocates, publish flannel's annotations, and
// their pods reach each other; a Node deleted is removed everywhere.
func TestKubeModePodsReachEachOther(t *testing.T) {
	for _, tc := range []struct{ backend, prefix string }{{"vxlan", ""}, {"host-gw", "flannel.alpha.coreos.com"}} {
		t.Run(tc.backend, func(t *testing.T) {
			requireKube(t)
			o := clusterOpts{backend: tc.backend, nodes: 3, kube: true}
			if tc.prefix != "" {
				o.env = []string{"WEFTD_KUBE_ANNOTATION_PREFIX=" + tc.prefix}
			}
			prefix := tc.prefix
			if prefix == "" {
				prefix = kube.DefaultPrefix
			}
			c := startCluster(t, o)
			addPods(t, c, 1)
			requireMesh(t, c)
			cs := kubeClient(t, c)
			ctx := context.Background()
			for _, n := range c.Nodes {
				node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				sn, _ := n.Subnet()
				if node.Spec.PodCIDR != sn.String() {
					t.Errorf("%s: subnet.env has %s, its Node's podCIDR is %s", n.Name, sn, node.Spec.PodCIDR)
				}
				a := node.Annotations
				if a[prefix+"/backend-type"] != tc.backend || a[prefix+"/public-ip"] != n.IP.String() || a[prefix+"/kube-subnet-manager"] != "true" {
					t.Errorf("%s annotations: %v", n.Name, a)
				}
				if tc.backend == "vxlan" {
					var data struct {
						VNI     int
						VtepMAC string
					}
					if err := json.Unmarshal([]byte(a[prefix+"/backend-data"]), &data); err != nil || data.VNI != 1 || data.VtepMAC == "" {
						t.Errorf("%s backend-data %q: %v", n.Name, a[prefix+"/backend-data"], err)
					}
				}
			}
			// weftctl reads the same leases from the Node objects.
			out := ipOut(t, c.Fabric, testBin(t, "weftctl"), "leases", "--kube-subnet-mgr", "--kubeconfig-file", c.WeftdKubeconfig(), "--kube-annotation-prefix", prefix)
			for _, n := range c.Nodes {
				sn, _ := n.Subnet()
				if !strings.Contains(out, sn.String()) || !strings.Contains(out, n.Name) {
					t.Errorf("weftctl leases lacks %s %s:\n%s", sn, n.Name, out)
				}
			}
			if st := ipOut(t, c.Nodes[0].NS, testBin(t, "weftctl"), "status"); !strings.Contains(st, "LEASE TTL       none (the subnet is the Node's podCIDR)") {
				t.Errorf("weftctl status:\n%s", st)
			}
			gone := c.Nodes[2]
			goneSubnet, _ := gone.Subnet()
			c.RemoveNode(gone)
			for _, n := range c.Nodes {
				testenv.Eventually(t, 10*time.Second, n.Name+" to remove the route to the deleted Node's subnet", func() (bool, string) {
					out := ipOut(t, n.NS, "ip", "route", "show", goneSubnet.String())
					return strings.TrimSpace(out) == "", out
				})
			}
		})
	}
}

// weftd runs as the ServiceAccount bound to dist's ClusterRole: it works
// (the test above), and anything beyond the role is refused.
func TestKubeModeLeastPrivilege(t *testing.T) {
	requireKube(t)
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 1, kube: true})
	cfg, err := clientcmd.BuildConfigFromFlags("", c.WeftdKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return sandbox.DialIn(ctx, c.Fabric, network, addr)
	}
	as, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	n := c.Nodes[0].Name
	if _, err := as.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("listing nodes as weftd: %v", err)
	}
	if _, err := as.CoreV1().Nodes().Patch(ctx, n, types.MergePatchType, []byte(`{"metadata":{"annotations":{"x":"y"}}}`), metav1.PatchOptions{}); err != nil {
		t.Errorf("annotating a node as weftd: %v", err)
	}
	for what, call := range map[string]func() error{
		"deleting a node": func() error {
			return as.CoreV1().Nodes().Delete(ctx, n, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
		},
		"listing pods":    func() error { _, err := as.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); return err },
		"reading secrets": func() error { _, err := as.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{}); return err },
		"creating a node": func() error {
			_, err := as.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "intruder"}}, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			return err
		},
	} {
		if err := call(); !apierrors.IsForbidden(err) {
			t.Errorf("%s as weftd: %v; want Forbidden", what, err)
		}
	}
}

// With the API server stopped for 30 s pods keep talking; a node that
// starts meanwhile is programmed by the others once the server is back.
func TestKubeModeAPIServerDown(t *testing.T) {
	requireKube(t)
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 3, kube: true})
	addPods(t, c, 1)
	requireMesh(t, c)
	late, err := c.PrepareNode(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.RegisterKubeNode(context.Background(), late); err != nil {
		t.Fatal(err)
	}
	ps := pingAll(t, c)
	c.StopKubeAPI()
	if err := c.StartWeftdAsync(late); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Second)
	if err := c.StartKubeAPI(context.Background()); err != nil {
		t.Fatal(err)
	}
	requireNoOutage(t, ps)
	testenv.Eventually(t, 60*time.Second, "the late node to be ready", func() (bool, string) {
		st, err := c.Status(late)
		return err == nil && st.Ready, fmt.Sprintf("%+v %v", st, err)
	})
	sn, _ := late.Subnet()
	for _, n := range c.Nodes[:3] {
		testenv.Eventually(t, 30*time.Second, n.Name+" to program the late node", func() (bool, string) {
			out := ipOut(t, n.NS, "ip", "route", "show", sn.String())
			return strings.Contains(out, sn.String()), out
		})
	}
}

// The manifests in dist/kubernetes are accepted by a real API server
// (server-side apply, dry run).
func TestKubeManifestsAreAccepted(t *testing.T) {
	requireKube(t)
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 0, kube: true})
	cfg := c.KubeConfig()
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"weft.yaml", "weft-etcd.yaml"} {
		data, err := os.ReadFile(filepath.Join("..", "dist", "kubernetes", file))
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(data), "\n---\n") {
			obj := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			gvk := obj.GroupVersionKind()
			m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				t.Fatalf("%s: %s: %v", file, gvk, err)
			}
			js, _ := json.Marshal(obj.Object)
			var res dynamic.ResourceInterface = dyn.Resource(m.Resource)
			if ns := obj.GetNamespace(); ns != "" {
				res = dyn.Resource(m.Resource).Namespace(ns)
			}
			_, err = res.Patch(context.Background(), obj.GetName(), types.ApplyPatchType, js, metav1.PatchOptions{FieldManager: "weft-test", DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				t.Errorf("%s: %s %s refused: %v", file, gvk.Kind, obj.GetName(), err)
			}
		}
	}
}

// In Kubernetes mode a backend switch is an edit of the ConfigMap, picked
// up from the mounted file as in etcd mode: every node switches live, its
// Node's annotations say the new backend, and no ping is lost.
func TestKubeModeSwitchesBackendLive(t *testing.T) {
	requireKube(t)
	c := startCluster(t, clusterOpts{backend: "vxlan", nodes: 2, kube: true})
	addPods(t, c, 1)
	requireMesh(t, c)
	ps := pingAll(t, c)
	time.Sleep(time.Second)
	for _, n := range c.Nodes {
		if err := c.SetNodeConfig(n, netConf("host-gw")); err != nil {
			t.Fatal(err)
		}
	}
	waitForBackend(t, c, "host-gw")
	cs := kubeClient(t, c)
	for _, n := range c.Nodes {
		testenv.Eventually(t, 15*time.Second, n.Name+"'s Node to announce host-gw", func() (bool, string) {
			node, err := cs.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
			if err != nil {
				return false, err.Error()
			}
			a := node.Annotations[kube.DefaultPrefix+"/backend-type"]
			return a == "host-gw", a
		})
	}
	requireNoOutage(t, ps)
	requireMesh(t, c)
}
