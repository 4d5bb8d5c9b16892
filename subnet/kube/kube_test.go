package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/subnet"
)

// fakeNodes is an in-memory Node API for the unit tests; the real API
// server is in the e2e tests (e2e/kube_test.go).
type fakeNodes struct {
	mu      sync.Mutex
	nodes   map[string]*Node
	watcher *watch.FakeWatcher
}

func newFake(nodes ...*Node) *fakeNodes {
	f := &fakeNodes{nodes: map[string]*Node{}, watcher: watch.NewFakeWithChanSize(100, false)}
	for _, n := range nodes {
		f.nodes[n.Name] = n
	}
	return f
}

func (f *fakeNodes) Get(_ context.Context, name string) (*Node, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.nodes[name]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "nodes"}, name)
	}
	return n.DeepCopyObject().(*Node), nil
}

func (f *fakeNodes) List(context.Context, metav1.ListOptions) (*NodeList, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := &NodeList{}
	for _, n := range f.nodes {
		l.Items = append(l.Items, *n.DeepCopyObject().(*Node))
	}
	return l, nil
}

// IsWatchListSemanticsUnSupported tells client-go's reflector to list,
// then watch: the fake cannot stream a listing as watch events.
func (f *fakeNodes) IsWatchListSemanticsUnSupported() bool { return true }

func (f *fakeNodes) Watch(context.Context, metav1.ListOptions) (watch.Interface, error) {
	return f.watcher, nil
}

func (f *fakeNodes) Patch(_ context.Context, name string, _ types.PatchType, data []byte) (*Node, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.nodes[name]
	if !ok {
		return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "nodes"}, name)
	}
	var p struct {
		Metadata struct{ Annotations map[string]*string } `json:"metadata"`
	}
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, err
	}
	if n.Annotations == nil {
		n.Annotations = map[string]string{}
	}
	for k, v := range p.Metadata.Annotations {
		if v == nil {
			delete(n.Annotations, k)
		} else {
			n.Annotations[k] = *v
		}
	}
	return n.DeepCopyObject().(*Node), nil
}

func node(name, cidr string, ann map[string]string) *Node {
	n := &Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	if cidr != "" {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = cidr, []string{cidr}
	}
	return n
}

func weftAnn(ip string) map[string]string {
	return map[string]string{
		DefaultPrefix + "/backend-type": "vxlan",
		DefaultPrefix + "/backend-data": `{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}`,
		DefaultPrefix + "/public-ip":    ip,
	}
}

func network(t testing.TB) *subnet.Config {
	cfg, _, err := subnet.ParseConfig([]byte(`{"Network":"100.96.0.0/12","SubnetMin":"100.96.5.0"}`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// The podCIDR is this node's subnet, also the network's first /24, below
// SubnetMin; its attributes become annotations in flannel's names.
func TestAcquireWaitsForThePodCIDRAndAnnotates(t *testing.T) {
	f := newFake(node("node-1", "", nil))
	logger, hook := logtest.NewNullLogger()
	s := New(f, Options{NodeName: "node-1", Log: logrus.NewEntry(logger)})
	done := make(chan *Claim)
	go func() {
		c, err := s.Acquire(context.Background(), network(t), subnet.Attrs{PublicIP: mustAddr("198.18.0.1"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1}`)})
		if err != nil {
			t.Error(err)
		}
		done <- c
	}()
	testenv.Eventually(t, 5*time.Second, "Acquire to say what it waits for", func() (bool, string) {
		for _, e := range hook.AllEntries() {
			if err, ok := e.Data["error"].(error); ok && strings.Contains(err.Error(), "has no IPv4 podCIDR yet") {
				return true, ""
			}
		}
		return false, fmt.Sprint(hook.AllEntries())
	})
	f.mu.Lock()
	f.nodes["node-1"].Spec.PodCIDRs = []string{"100.96.0.0/24"}
	f.mu.Unlock()
	c := <-done
	if c == nil || c.Lease().Key() != "100.96.0.0-24" {
		t.Fatalf("lease %+v", c)
	}
	n, _ := f.Get(context.Background(), "node-1")
	if n.Annotations[DefaultPrefix+"/public-ip"] != "198.18.0.1" || n.Annotations[DefaultPrefix+"/backend-type"] != "vxlan" ||
		n.Annotations[DefaultPrefix+"/kube-subnet-manager"] != "true" || n.Annotations[DefaultPrefix+"/backend-data"] != `{"VNI":1}` {
		t.Errorf("annotations %v", n.Annotations)
	}
	if _, ok := n.Annotations[DefaultPrefix+"/public-ipv6"]; ok {
		t.Error("an empty IPv6 address was annotated")
	}
}

func TestAcquireRefusesAPodCIDROutsideTheNetwork(t *testing.T) {
	f := newFake(node("node-1", "100.64.3.0/24", nil))
	s := New(f, Options{NodeName: "node-1", Log: logrus.NewEntry(logrus.New())})
	_, err := s.Acquire(context.Background(), network(t), subnet.Attrs{PublicIP: mustAddr("198.18.0.1"), BackendType: "vxlan"})
	if err == nil || !strings.Contains(err.Error(), "podCIDR 100.64.3.0/24 is outside the network 100.96.0.0/12") || !strings.Contains(err.Error(), "--cluster-cidr=100.96.0.0/12") {
		t.Errorf("err = %v", err)
	}
}

// Nodes become lease events: the first batch holds every lease; a Node
// without weft, or with a malformed annotation, is none (the latter
// logged once); a changed podCIDR is a removal and an addition; a
// deleted Node is removed.
func TestWatchTurnsNodesIntoLeaseEvents(t *testing.T) {
	f := newFake(
		node("node-1", "100.96.0.0/24", weftAnn("198.18.0.1")),
		node("node-2", "100.96.1.0/24", weftAnn("198.18.0.2")),
		node("bare", "100.96.2.0/24", nil),
		node("broken", "100.96.3.0/24", map[string]string{DefaultPrefix + "/backend-type": "vxlan", DefaultPrefix + "/public-ip": "not-an-ip"}),
	)
	logger, hook := logtest.NewNullLogger()
	s := New(f, Options{NodeName: "node-1", Log: logrus.NewEntry(logger)})
	out := make(chan []subnet.Event, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Watch(ctx, network(t), out)
	describe := func(batch []subnet.Event) string {
		var s []string
		for _, ev := range batch {
			s = append(s, fmt.Sprintf("%s %s %s", ev.Type, ev.Lease.Key(), ev.Lease.PublicIP))
		}
		return strings.Join(s, ", ")
	}
	first := <-out
	got := describe(first)
	if len(first) != 2 || !strings.Contains(got, "100.96.0.0-24 198.18.0.1") || !strings.Contains(got, "100.96.1.0-24 198.18.0.2") {
		t.Errorf("first batch: %s", got)
	}
	warned := 0
	for _, e := range hook.AllEntries() {
		if strings.Contains(fmt.Sprint(e.Data["node"]), "broken") {
			warned++
		}
	}
	if warned != 1 {
		t.Errorf("%d warnings about the broken Node: %v", warned, hook.AllEntries())
	}
	next := func() string {
		select {
		case b := <-out:
			return describe(b)
		case <-time.After(2 * time.Second):
			return "nothing"
		}
	}
	moved := node("node-2", "100.96.7.0/24", weftAnn("198.18.0.2"))
	f.watcher.Modify(moved)
	if got := next(); got != "removed 100.96.1.0-24 198.18.0.2, added 100.96.7.0-24 198.18.0.2" {
		t.Errorf("podCIDR changed: %s", got)
	}
	f.watcher.Delete(moved)
	if got := next(); got != "removed 100.96.7.0-24 198.18.0.2" {
		t.Errorf("node deleted: %s", got)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
