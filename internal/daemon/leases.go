package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcd"
	"github.com/weft-net/weft/subnet/kube"
)

// leaseSource is where this node's lease and every other node's come
// from: etcd (subnet/etcd) or the Kubernetes API (subnet/kube,
// --kube-subnet-mgr). Both give the reconciler the same events.
type leaseSource interface {
	// acquire gets this node's lease, publishing attrs.
	acquire(ctx context.Context, network *subnet.Config, attrs subnet.Attrs) (leaseClaim, error)
	// watch sends every lease, then the changes, on out until ctx ends.
	watch(ctx context.Context, network *subnet.Config, out chan<- []subnet.Event) error
	watchRestarts() uint64
}

// leaseClaim is this node's lease (*etcd.Claim, *kube.Claim).
type leaseClaim interface {
	Lease() subnet.Lease
	Update(ctx context.Context, attrs subnet.Attrs) error
	// Keep holds the lease until ctx ends.
	Keep(ctx context.Context)
	// TTL is the time the lease has left (negative: it does not expire).
	TTL() time.Duration
	Problem() error
	// Abandon gives back a lease this run created for a new subnet.
	Abandon(ctx context.Context) error
}

// etcdLeases are leases in etcd, flannel's layout.
type etcdLeases struct {
	store      *etcd.Store
	subnetFile string
	claim      *etcd.Claim
	// waiting hears why acquiring cannot go on yet (the status shows it).
	waiting func(error)
}

func (e *etcdLeases) acquire(ctx context.Context, network *subnet.Config, attrs subnet.Attrs) (leaseClaim, error) {
	req := etcd.AcquireRequest{Config: network, Attrs: attrs, Waiting: e.waiting}
	if prev, err := subnet.ReadEnvFile(e.subnetFile); err == nil {
		req.Previous, req.PreviousIPv6 = prev.Subnet.Masked(), prev.IPv6Subnet.Masked()
	}
	c, err := e.store.Acquire(ctx, req)
	if err != nil {
		return nil, err
	}
	e.claim = c
	return c, nil
}

func (e *etcdLeases) watch(ctx context.Context, network *subnet.Config, out chan<- []subnet.Event) error {
	return e.store.WatchFrom(ctx, network, out, e.claim.TakeListing())
}

func (e *etcdLeases) watchRestarts() uint64 { return e.store.WatchRestarts() }

// kubeLeases are Node objects: podCIDRs and annotations.
type kubeLeases struct{ store *kube.Store }

func (k *kubeLeases) acquire(ctx context.Context, network *subnet.Config, attrs subnet.Attrs) (leaseClaim, error) {
	c, err := k.store.Acquire(ctx, network, attrs)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (k *kubeLeases) watch(ctx context.Context, network *subnet.Config, out chan<- []subnet.Event) error {
	return k.store.Watch(ctx, network, out)
}

func (k *kubeLeases) watchRestarts() uint64 { return k.store.WatchRestarts() }

// kubeSource opens the lease store on the Kubernetes API.
func (d *daemon) kubeSource() (*kubeLeases, error) {
	c, err := kube.NewClient(d.cfg.Kube.Kubeconfig, d.cfg.Kube.APIURL, "weftd")
	if err != nil {
		return nil, &InvalidError{Err: fmt.Errorf("--kube-subnet-mgr: %w", err)}
	}
	kube.LogTo(d.log)
	store := kube.New(c, kube.Options{
		NodeName: d.cfg.NodeName, Prefix: d.cfg.Kube.AnnotationPrefix,
		Log: d.log,
	})
	return &kubeLeases{store: store}, nil
}
