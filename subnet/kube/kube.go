// Package kube is weft's lease store on Kubernetes (weftd
// --kube-subnet-mgr), as flannel's kube subnet manager: a node's subnet is
// its Node's spec.podCIDR(s), which kube-controller-manager allocates;
// how peers reach it (public addresses, backend type and data) are
// annotations on the Node in flannel's names; every node follows every
// Node with one informer. The same leases and events as subnet/etcd come
// out, so the reconciler does not know which store it is fed by.
package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/weft-net/weft/internal/ratelog"
	"github.com/weft-net/weft/subnet"
)

// Annotation names, as flannel's, below Options.Prefix.
const (
	AnnBackendType   = "backend-type"
	AnnBackendData   = "backend-data"
	AnnBackendV6Data = "backend-v6-data"
	AnnPublicIP      = "public-ip"
	AnnPublicIPv6    = "public-ipv6"
	AnnKubeManaged   = "kube-subnet-manager"
)

// DefaultPrefix is weft's annotation prefix; flannel's is
// flannel.alpha.coreos.com (use it to share a cluster with flannel nodes).
const DefaultPrefix = "weft.weft-net.io"

// Options configure a Store.
type Options struct {
	// NodeName is this node's Node.
	NodeName string
	// Prefix is the annotations' prefix (DefaultPrefix when empty).
	Prefix string
	// Timeout bounds each API request (default 10 s).
	Timeout time.Duration
	Log     *logrus.Entry
}

// Store reads and writes leases as Node objects.
type Store struct {
	nodes    Nodes
	opts     Options
	log      *logrus.Entry
	restarts atomic.Uint64
	bad      ratelog.Limiter // Nodes that are not leases, once per reason
}

// New returns a store on nodes (NewClient).
func New(nodes Nodes, opts Options) *Store {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Log == nil {
		opts.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	return &Store{nodes: nodes, opts: opts, log: opts.Log.WithField("component", "store")}
}

func (s *Store) ann(name string) string { return s.opts.Prefix + "/" + name }

// ErrNotALease is wrapped by LeaseOf for a Node that runs no weft or
// flannel (no podCIDR, or no backend annotations yet).
var ErrNotALease = errors.New("not a lease")

// LeaseOf reads a Node as a lease.
func (s *Store) LeaseOf(n *Node) (subnet.Lease, error) {
	var l subnet.Lease
	l.Node = n.Name
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	if len(cidrs) == 0 {
		return l, fmt.Errorf("node %s has no podCIDR: %w", n.Name, ErrNotALease)
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil || p.Masked() != p {
			return l, fmt.Errorf("node %s: podCIDR %q is not a network", n.Name, c)
		}
		if p.Addr().Is4() {
			l.Subnet = p
		} else {
			l.IPv6Subnet = p
		}
	}
	a := n.Annotations
	l.BackendType = a[s.ann(AnnBackendType)]
	if l.BackendType == "" {
		return l, fmt.Errorf("node %s has no %s annotation (weftd or flanneld not running there yet): %w", n.Name, s.ann(AnnBackendType), ErrNotALease)
	}
	for _, f := range []struct {
		key string
		dst *netip.Addr
		v6  bool
	}{{AnnPublicIP, &l.PublicIP, false}, {AnnPublicIPv6, &l.PublicIPv6, true}} {
		v, ok := a[s.ann(f.key)]
		if !ok || v == "" {
			continue
		}
		ip, err := netip.ParseAddr(v)
		if err != nil || ip.Is6() != f.v6 || ip.Is4In6() || ip.Zone() != "" {
			return l, fmt.Errorf("node %s: annotation %s %q is not an %s address", n.Name, s.ann(f.key), v, map[bool]string{false: "IPv4", true: "IPv6"}[f.v6])
		}
		*f.dst = ip
	}
	for _, f := range []struct {
		key string
		dst *json.RawMessage
	}{{AnnBackendData, &l.BackendData}, {AnnBackendV6Data, &l.BackendV6Data}} {
		v, ok := a[s.ann(f.key)]
		if !ok || v == "" || v == "null" {
			continue
		}
		if !json.Valid([]byte(v)) {
			return l, fmt.Errorf("node %s: annotation %s is not JSON", n.Name, s.ann(f.key))
		}
		*f.dst = json.RawMessage(v)
	}
	return l, nil
}

// annotations are the annotations that publish attrs; a value nil removes
// the annotation (a merge patch's null).
func (s *Store) annotations(attrs subnet.Attrs) map[string]*string {
	str := func(v string) *string {
		if v == "" {
			return nil
		}
		return &v
	}
	addr := func(a netip.Addr) *string {
		if !a.IsValid() {
			return nil
		}
		return str(a.String())
	}
	return map[string]*string{
		s.ann(AnnBackendType):   str(attrs.BackendType),
		s.ann(AnnBackendData):   str(string(attrs.BackendData)),
		s.ann(AnnBackendV6Data): str(string(attrs.BackendV6Data)),
		s.ann(AnnPublicIP):      addr(attrs.PublicIP),
		s.ann(AnnPublicIPv6):    addr(attrs.PublicIPv6),
		s.ann(AnnKubeManaged):   str("true"),
	}
}

// publish writes attrs to this node's annotations (one merge patch).
func (s *Store) publish(ctx context.Context, attrs subnet.Attrs) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": s.annotations(attrs)}})
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	if _, err := s.nodes.Patch(cctx, s.opts.NodeName, types.MergePatchType, patch); err != nil {
		return fmt.Errorf("annotating node %s: %w", s.opts.NodeName, err)
	}
	return nil
}

// Acquire waits until this node's Node has podCIDRs of the network's
// families inside it (kube-controller-manager assigns them; the podCIDR is
// authoritative, whatever SubnetMin says), publishes attrs as its
// annotations and returns the claim. It says every few seconds what it is
// waiting for.
func (s *Store) Acquire(ctx context.Context, cfg *subnet.Config, attrs subnet.Attrs) (*Claim, error) {
	waiting := ratelog.Limiter{Every: 10 * time.Second}
	for {
		lease, err := s.own(ctx, cfg)
		if err == nil {
			attrs.Node = s.opts.NodeName
			if err := s.publish(ctx, attrs); err != nil {
				return nil, err
			}
			lease.Attrs = attrs
			s.log.WithFields(logrus.Fields{"node": s.opts.NodeName, "subnet": lease.Key()}).Info("subnet from the node's podCIDR")
			return &Claim{s: s, lease: lease}, nil
		}
		var final *finalError
		if errors.As(err, &final) {
			return nil, final.err
		}
		if waiting.Allow("own", err.Error()) {
			s.log.WithError(err).Warn("waiting for this node's podCIDR")
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// finalError is an error waiting cannot fix.
type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }

// own reads this node's podCIDRs as a lease.
func (s *Store) own(ctx context.Context, cfg *subnet.Config) (subnet.Lease, error) {
	cctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	n, err := s.nodes.Get(cctx, s.opts.NodeName)
	if apierrors.IsNotFound(err) {
		return subnet.Lease{}, fmt.Errorf("node %s does not exist in the Kubernetes API (is --node-name, or NODE_NAME, the Node's name?)", s.opts.NodeName)
	}
	if err != nil {
		return subnet.Lease{}, fmt.Errorf("reading node %s: %w", s.opts.NodeName, err)
	}
	var l subnet.Lease
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return l, &finalError{fmt.Errorf("node %s: podCIDR %q is not a network", n.Name, c)}
		}
		if p.Addr().Is4() {
			l.Subnet = p
		} else {
			l.IPv6Subnet = p
		}
	}
	for _, pool := range cfg.Pools() {
		sn := l.Family(pool.IPv6()).Subnet
		if !sn.IsValid() {
			return l, fmt.Errorf("node %s has no %s podCIDR yet (kube-controller-manager --allocate-node-cidrs assigns them)", n.Name, subnet.Family{IPv6: pool.IPv6()}.Name())
		}
		if !pool.Network.Contains(sn.Addr()) || sn.Bits() < pool.Network.Bits() {
			return l, &finalError{fmt.Errorf("node %s: podCIDR %s is outside the network %s of net-conf.json; give kube-controller-manager --cluster-cidr=%s", n.Name, sn, pool.Network, pool.Network)}
		}
	}
	return l, nil
}

// Claim is this node's lease: its podCIDRs and the annotations it
// publishes. It is safe for concurrent use.
type Claim struct {
	s     *Store
	mu    sync.Mutex
	lease subnet.Lease // guarded by mu
}

// Lease returns this node's lease.
func (c *Claim) Lease() subnet.Lease {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lease
}

// Update publishes new attributes (an address or the backend changed).
func (c *Claim) Update(ctx context.Context, attrs subnet.Attrs) error {
	attrs.Node = c.s.opts.NodeName
	if err := c.s.publish(ctx, attrs); err != nil {
		return err
	}
	c.mu.Lock()
	c.lease.Attrs = attrs
	c.mu.Unlock()
	c.s.log.WithFields(logrus.Fields{"node": c.s.opts.NodeName, "backend": attrs.BackendType}).Info("node annotations updated")
	return nil
}

// Keep has nothing to renew (a Node lives until it is deleted); it
// returns when ctx ends.
func (c *Claim) Keep(ctx context.Context) { <-ctx.Done() }

// Abandon does nothing: the podCIDR is kube-controller-manager's.
func (c *Claim) Abandon(context.Context) error { return nil }

// TTL is -1 s: a Node has no time to live.
func (c *Claim) TTL() time.Duration { return -time.Second }

// Problem is nil: what could go wrong with the lease is said while
// acquiring it.
func (c *Claim) Problem() error { return nil }

// WatchRestarts counts how often the Node watch broke and was resumed.
func (s *Store) WatchRestarts() uint64 { return s.restarts.Load() }

// Watch sends the leases of every Node on out, the first batch with all of
// them, then every change, until ctx ends. A Node that runs no weft or
// flannel yet (no podCIDR, no annotations) is no lease; one whose lease
// does not fit cfg is logged once per reason and treated as absent. While
// the API server is unreachable nothing is sent, so the receiver keeps
// what it has.
func (s *Store) Watch(ctx context.Context, cfg *subnet.Config, out chan<- []subnet.Event) error {
	q := &queue{signal: make(chan struct{}, 1), synced: make(chan struct{})}
	var lists atomic.Uint64
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			if lists.Add(1) > 1 {
				s.restarts.Add(1)
			}
			l, err := s.nodes.List(ctx, o)
			if err != nil && s.bad.Allow("list", err.Error()) {
				s.log.WithError(err).Warn("listing Nodes failed; retrying")
			}
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return s.nodes.Watch(ctx, o)
		},
	}
	// A reflector of its own rather than an informer: it feeds the queue
	// directly, and retries within seconds when the API server is back
	// (an informer's backoff grows to a minute).
	r := cache.NewReflectorWithOptions(cache.ToListWatcherWithWatchListSemantics(lw, s.nodes), &Node{}, q, cache.ReflectorOptions{
		Name:    "weft-nodes",
		Backoff: &wait.Backoff{Duration: 500 * time.Millisecond, Factor: 1.6, Jitter: 0.3, Steps: math.MaxInt32, Cap: 5 * time.Second},
	})
	go r.RunWithContext(ctx)
	select {
	case <-q.synced:
	case <-ctx.Done():
		return ctx.Err()
	}
	known := map[string]subnet.Lease{} // by Node name: leases sent
	first := true
	for {
		batch := s.events(q.take(), cfg, known)
		if first || len(batch) > 0 {
			if batch == nil {
				batch = []subnet.Event{}
			}
			select {
			case out <- batch:
			case <-ctx.Done():
				return ctx.Err()
			}
			first = false
		}
		select {
		case <-q.signal:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// events turns Node changes into lease events, keeping known current.
func (s *Store) events(changes []change, cfg *subnet.Config, known map[string]subnet.Lease) []subnet.Event {
	var batch []subnet.Event
	for _, ch := range changes {
		if ch.list != nil || ch.obj == nil {
			// A listing: Nodes not in it are gone, the others as changed.
			present := map[string]bool{}
			var listed []change
			for _, obj := range ch.list {
				if n, ok := obj.(*Node); ok {
					present[n.Name] = true
					listed = append(listed, change{obj: n})
				}
			}
			for name, old := range known {
				if !present[name] {
					delete(known, name)
					batch = append(batch, subnet.Event{Type: subnet.Removed, Lease: old})
				}
			}
			batch = append(batch, s.events(listed, cfg, known)...)
			continue
		}
		n, ok := ch.obj.(*Node)
		if !ok {
			continue
		}
		old, had := known[n.Name]
		var l subnet.Lease
		var err error
		if ch.deleted {
			err = ErrNotALease
		} else if l, err = s.LeaseOf(n); err == nil {
			err = cfg.CheckLease(&l)
		}
		if err != nil {
			if !errors.Is(err, ErrNotALease) && s.bad.Allow(n.Name, err.Error()) {
				s.log.WithField("node", n.Name).WithError(err).Warn("ignoring invalid lease")
			}
			if had {
				delete(known, n.Name)
				batch = append(batch, subnet.Event{Type: subnet.Removed, Lease: old})
			}
			continue
		}
		s.bad.Forget(n.Name)
		if had && old.Equal(&l) {
			continue
		}
		if had && old.Key() != l.Key() {
			batch = append(batch, subnet.Event{Type: subnet.Removed, Lease: old})
		}
		known[n.Name] = l
		batch = append(batch, subnet.Event{Type: subnet.Added, Lease: l, Age: n.CreationTimestamp.UnixNano()})
	}
	return batch
}

// change is one notification of the reflector: a Node added, changed or
// deleted, or (list set) the whole list after a listing.
type change struct {
	obj     any
	deleted bool
	list    []any
}

// queue is the reflector's store: it hands what the reflector sees to
// Watch without blocking it.
type queue struct {
	mu      sync.Mutex
	changes []change // guarded by mu
	signal  chan struct{}
	synced  chan struct{} // closed at the first listing
	once    sync.Once
}

func (q *queue) push(ch change) {
	q.mu.Lock()
	q.changes = append(q.changes, ch)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *queue) take() []change {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := slices.Clone(q.changes)
	q.changes = q.changes[:0]
	return out
}

// Add implements cache.ReflectorStore.
func (q *queue) Add(obj any) error { q.push(change{obj: obj}); return nil }

// Update implements cache.ReflectorStore.
func (q *queue) Update(obj any) error { q.push(change{obj: obj}); return nil }

// Delete implements cache.ReflectorStore.
func (q *queue) Delete(obj any) error {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	q.push(change{obj: obj, deleted: true})
	return nil
}

// Replace implements cache.ReflectorStore: a listing, at start and after
// the watch could not be resumed.
func (q *queue) Replace(list []any, _ string) error {
	q.push(change{list: list})
	q.once.Do(func() { close(q.synced) })
	return nil
}

// Resync implements cache.ReflectorStore.
func (q *queue) Resync() error { return nil }

// Listed is one Node read as a lease.
type Listed struct {
	Node  string
	Lease subnet.Lease
	// Err is why the Node is not a lease (ErrNotALease: no weft or
	// flannel there yet).
	Err error
}

// List reads every Node, in pages.
func (s *Store) List(ctx context.Context) ([]Listed, error) {
	var out []Listed
	opts := metav1.ListOptions{Limit: 500}
	for {
		cctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
		page, err := s.nodes.List(cctx, opts)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("listing nodes: %w", err)
		}
		for i := range page.Items {
			l, err := s.LeaseOf(&page.Items[i])
			out = append(out, Listed{Node: page.Items[i].Name, Lease: l, Err: err})
		}
		if page.Continue == "" {
			return out, nil
		}
		opts.Continue = page.Continue
	}
}
