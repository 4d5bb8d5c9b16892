// Package reconcile is the one owner of this node's view of its peers and
// of what the kernel holds for them: the peer set and its admission rules,
// the backends, and the sync loop that makes the kernel match. Its inputs
// are lease events, configurations, snapshots of the external interface
// and kernel drift; its outputs are what the node's lease should announce
// and its status. Everything here runs on the goroutine of Run
// (docs/architecture.md walks a lease through it).
package reconcile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/kernel"
	"github.com/weft-net/weft/internal/mailbox"
	"github.com/weft-net/weft/internal/ratelog"
	"github.com/weft-net/weft/internal/status"
	"github.com/weft-net/weft/subnet"
)

// Programmer is the kernel layer (*kernel.Kernel); tests give a fake that
// records what it is asked.
type Programmer interface {
	NewWant(owners int) *kernel.Want
	Sync(w *kernel.Want) kernel.Result
	Update(changes []kernel.Change) kernel.Result
	SweepLinks(owned map[string]bool) ([]string, error)
}

// Metrics is where the reconciler reports; internal/daemon implements it
// with Prometheus.
type Metrics interface {
	ObserveSync(d time.Duration, peers backend.Stats, err error)
	ConfigRejected()
	SetBackend(t string)
}

// Config is what a Reconciler starts from.
type Config struct {
	// Netlink is the handle of the node's namespace, for the backends'
	// devices and the underlay's routes.
	Netlink netlinksafe.Handle
	Kernel  Programmer
	// Backends are the constructors by type (default Constructors).
	Backends  map[string]backend.Constructor
	Network   *subnet.Config
	Interface *backend.ExternalInterface
	// Infrastructure are the addresses of etcd (those --etcd-endpoints
	// gives as addresses; none in Kubernetes mode), with what each is
	// ("etcd's (--etcd-endpoints)"): a lease asking to be reached at one
	// of them is refused.
	Infrastructure map[netip.Addr]string
	// ResyncInterval is how often the kernel is compared with the leases
	// even without events (drift repair).
	ResyncInterval time.Duration
	Log            *logrus.Entry
	Metrics        Metrics
}

// Inputs are the channels Run reads.
type Inputs struct {
	// Leases are batches of lease events; the first is the full listing.
	Leases <-chan []subnet.Event
	// Configs are new valid network configurations.
	Configs <-chan *subnet.Config
	// Interfaces are new snapshots of the external interface.
	Interfaces <-chan *backend.ExternalInterface
	// Drift says the kernel changed under weft (an entry deleted, the
	// underlay's routes changed): read it again soon.
	Drift <-chan struct{}
}

// Announcement is what the node's lease and subnet.env must say.
type Announcement struct {
	// Ready is set once the peers of the first listing are programmed.
	Ready                bool
	PublicIP, PublicIPv6 netip.Addr
	Backend              string
	Published            backend.Published
	// MTU is the MTU pods must use.
	MTU int
}

// Equal reports whether a and b say the same.
func (a Announcement) Equal(b Announcement) bool {
	return a.Ready == b.Ready && a.PublicIP == b.PublicIP && a.PublicIPv6 == b.PublicIPv6 && a.Backend == b.Backend &&
		bytes.Equal(a.Published.Data, b.Published.Data) && bytes.Equal(a.Published.V6Data, b.Published.V6Data) && a.MTU == b.MTU
}

// Status is what the reconciler reports about its work.
type Status struct {
	Backend     string
	Interface   string
	MTU         int
	Peers       status.Peers
	LastSync    time.Time
	LastSyncErr string
	SyncErrors  uint64
	// FailingSince is when the first of the syncs failed that have failed
	// since the last one that succeeded; zero if the last one succeeded.
	FailingSince time.Time
	// ConfigIssue says why the last configuration change was refused.
	ConfigIssue string
}

// Reconciler keeps the kernel in step with the leases. Start and Run are
// called in that order on one goroutine; Status is safe for concurrent use.
type Reconciler struct {
	cfg      Config
	log      *logrus.Entry
	kernel   Programmer
	network  *subnet.Config
	ext      *backend.ExternalInterface
	backends *backendSet
	// underlay is the underlay's routing table as the last full sync saw
	// it; updates work out entries with the same one.
	underlay  *backend.Underlay
	unserved  ratelog.Limiter // peers no backend serves, once per reason
	swept     bool            // leftover devices were removed
	announced Announcement
	status    Status
	shown     atomic.Pointer[Status] // a copy of status for Status()
	turned    atomic.Int64           // when Run's loop last came round (Unix ns)
}

// New returns a reconciler for cfg; it touches nothing until Start.
func New(cfg Config) *Reconciler {
	if cfg.Backends == nil {
		cfg.Backends = Constructors
	}
	r := &Reconciler{
		cfg: cfg, log: cfg.Log.WithField("component", "reconcile"), kernel: cfg.Kernel,
		network: cfg.Network, ext: cfg.Interface,
	}
	r.backends = &backendSet{
		env:          backend.Env{Netlink: cfg.Netlink, Network: cfg.Network, Log: cfg.Log},
		constructors: cfg.Backends, log: r.log, active: map[string]*running{},
	}
	r.status.Backend, r.status.Interface = cfg.Network.Backend.Type, cfg.Interface.Name
	r.show()
	return r
}

// Start sets up the configured backend and returns what the node's lease
// must announce before its subnet is known. Errors from a backend the
// configuration names but this weftd cannot run wrap ErrUnknownBackend.
func (r *Reconciler) Start(ctx context.Context) (Announcement, error) {
	opts := r.network.Backend
	if _, ok := r.cfg.Backends[opts.Type]; !ok {
		return Announcement{}, fmt.Errorf("%w: %q (this weftd has %s)", ErrUnknownBackend, opts.Type, r.backends.names())
	}
	if _, err := r.backends.setPrimary(ctx, opts, r.ext, &subnet.Lease{}); err != nil {
		return Announcement{}, err
	}
	r.cfg.Metrics.SetBackend(opts.Type)
	return r.announcement(false), nil
}

// ErrUnknownBackend is wrapped by Start for a backend type weftd lacks.
var ErrUnknownBackend = errors.New("unknown backend")

// LastTurn is when Run's loop last came round: at least every
// ResyncInterval while it is not stuck; zero before Run. Safe for
// concurrent use.
func (r *Reconciler) LastTurn() time.Time {
	if ns := r.turned.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// Status returns the reconciler's status as of its last sync.
func (r *Reconciler) Status() Status { return *r.shown.Load() }

func (r *Reconciler) show() {
	st := r.status
	r.shown.Store(&st)
}

// kernelCheckDelay is how long after a kernel event the kernel is read
// again to repair drift.
const kernelCheckDelay = 500 * time.Millisecond

// Run owns the peers of this node, whose own lease is self, until ctx
// ends: it applies lease events, coalescing bursts into one sync, and
// syncs again on drift and every ResyncInterval. It applies configuration
// changes (a backend switch) and interface snapshots between syncs, and
// sends to out what the lease and subnet.env must say whenever that
// changes. It waits for the first listing before touching the kernel:
// syncing before it would delete routes a restarted daemon should keep.
func (r *Reconciler) Run(ctx context.Context, self subnet.Lease, in Inputs, out *mailbox.Mailbox[Announcement]) error {
	f := fences{underlay: r.ext.Addrs, infra: r.cfg.Infrastructure}
	for _, pool := range r.cfg.Network.Pools() {
		f.pods = append(f.pods, pool.Network)
	}
	peers := newPeerSet(r.log, self, f)
	select {
	case batch := <-in.Leases:
		peers.apply(batch)
	case <-ctx.Done():
		return ctx.Err()
	}
	ready := false
	// full makes the next sync read the kernel and program every peer
	// rather than apply the changes since the last one: at first,
	// periodically, after drift, a configuration or interface change, and
	// after a failed sync.
	full := true
	var verifySoon <-chan time.Time
	ticker := time.NewTicker(r.cfg.ResyncInterval)
	defer ticker.Stop()
	for {
		r.turned.Store(time.Now().UnixNano())
	drain: // coalesce whatever else has arrived
		for {
			select {
			case batch := <-in.Leases:
				peers.apply(batch)
			default:
				break drain
			}
		}
		if full && ready && peers.hasChanges() {
			// Lease changes first: a full sync reads the kernel, tens of
			// milliseconds with thousands of peers.
			if err := r.sync(ctx, &self, peers, false); err != nil {
				r.log.WithError(err).Debug("update before a full sync incomplete")
			}
		}
		err := r.sync(ctx, &self, peers, full)
		full = err != nil
		if err != nil {
			r.log.WithError(err).Warn("sync incomplete; retrying")
		}
		ready = ready || err == nil
		if a := r.announcement(ready); !a.Equal(r.announced) {
			r.announced = a
			out.Send(a)
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case batch := <-in.Leases:
				peers.apply(batch)
				break wait
			case <-in.Drift:
				// Verify soon, without delaying lease work that arrives
				// meanwhile. Events share one check.
				if verifySoon == nil {
					verifySoon = time.After(kernelCheckDelay)
				}
			case <-verifySoon:
				verifySoon = nil
				full = true
				break wait
			case cfg := <-in.Configs:
				r.applyConfig(ctx, &self, cfg)
				full = true
				break wait
			case ext := <-in.Interfaces:
				r.applyInterface(ctx, &self, ext)
				peers.setUnderlay(r.ext.Addrs)
				full = true
				break wait
			case <-ticker.C:
				full = true
				break wait
			}
		}
	}
}

// announcement is what the lease and subnet.env must say now.
func (r *Reconciler) announcement(ready bool) Announcement {
	p := r.backends.primaryBackend()
	a := Announcement{Ready: ready, Backend: p.Type(), Published: p.published, MTU: p.MTU()}
	if r.network.IPv4.Enabled() {
		a.PublicIP = r.ext.PublicIP
	}
	if r.network.IPv6.Enabled() {
		a.PublicIPv6 = r.ext.PublicIPv6
	}
	return a
}

// sync programs the peers' changes since the last sync or, if full or
// when the changes need it, every peer, reading the kernel; and records
// what it did.
func (r *Reconciler) sync(ctx context.Context, self *subnet.Lease, peers *peerSet, full bool) error {
	start := time.Now()
	changes := peers.takeChanges() // a full sync programs them with the rest
	var err error
	if !full {
		err = r.update(ctx, changes, peers)
	}
	if full || errors.Is(err, errFullSync) {
		err = r.fullSync(ctx, self, peers)
	}
	known, stats := peers.stats()
	r.cfg.Metrics.ObserveSync(time.Since(start), stats, err)
	r.status.Peers = status.Peers{Known: known, Programmed: stats.Programmed, OtherType: stats.OtherType, Unreachable: stats.Unreachable, Direct: stats.Direct}
	r.status.LastSync, r.status.LastSyncErr = time.Now(), ""
	switch {
	case err == nil:
		r.status.FailingSince = time.Time{}
	case r.status.FailingSince.IsZero():
		r.status.FailingSince = r.status.LastSync
		fallthrough
	default:
		r.status.LastSyncErr = err.Error()
		r.status.SyncErrors++
	}
	r.status.MTU = r.backends.primaryBackend().MTU()
	r.show()
	return err
}

// errFullSync says that changes need a full sync: a peer announces a
// backend that is not running or not set up.
var errFullSync = errors.New("a full sync is needed")

// fullSync sets up every backend again, works out what every admitted peer
// needs and has the kernel layer read the kernel and apply the difference;
// then it removes backends and devices nobody needs.
func (r *Reconciler) fullSync(ctx context.Context, self *subnet.Lease, peers *peerSet) error {
	defer r.unserved.Round()
	r.underlay = backend.NewUnderlay(r.cfg.Netlink) // the underlay as it is now
	var errs []error
	if err := r.backends.setUpAll(ctx, r.ext, self); err != nil {
		errs = append(errs, err)
	}
	admitted := peers.admitted()
	want := r.kernel.NewWant(len(admitted))
	var e kernel.Entries
	type served struct {
		b   *running
		err error
	}
	byType := map[string]served{} // each type's backend is started once per sync
	for i, p := range admitted {
		s, ok := byType[p.lease.BackendType]
		if !ok {
			s.b, s.err = r.backends.serve(ctx, p.lease.BackendType, r.ext, self)
			byType[p.lease.BackendType] = s
		}
		b, err := s.b, s.err
		if err != nil {
			peers.setState(p, backend.OtherType)
			r.unserved.Warn(r.log.WithField("peer", p.lease.Key()), p.lease.Key(),
				fmt.Sprintf("cannot serve a peer announcing backend %q: %v", p.lease.BackendType, err))
			continue
		}
		if !b.setUp {
			peers.setState(p, backend.Unreachable)
			continue
		}
		e.Reset()
		r.peer(b, p, &e, peers)
		want.Add(i, &e)
	}
	want.Links = r.backends.links()
	res := r.kernel.Sync(want)
	errs = append(errs, r.failed(res, func(owner int) string { return admitted[owner].lease.Key() }))
	errs = append(errs, r.backends.removeUnused(ctx, peers.byType))
	err := errors.Join(errs...)
	if err == nil && !r.swept {
		// Once the peers are served: devices of a backend this node ran
		// before a restart and no longer needs.
		r.swept = true
		removed, err := r.kernel.SweepLinks(r.backends.devices())
		if len(removed) > 0 {
			r.log.WithField("devices", removed).Info("removed devices of a backend this node no longer runs")
		}
		if err != nil {
			r.log.WithError(err).Warn("cannot remove devices of a backend this node no longer runs")
		}
	}
	return err
}

// peer appends what p needs to e, records p's state and says once why it
// is unreachable.
func (r *Reconciler) peer(b *running, p *peer, e *kernel.Entries, peers *peerSet) {
	st, why := b.Peer(&p.lease, r.underlay, e)
	peers.setState(p, st)
	if why != "" {
		r.unserved.Warn(r.log.WithField("peer", p.lease.Key()), p.lease.Key(), why)
	}
}

// failed turns a kernel result's errors into one, naming the peers.
func (r *Reconciler) failed(res kernel.Result, key func(owner int) string) error {
	errs := []error{res.Err}
	for _, owner := range slices.Sorted(maps.Keys(res.Failed)) {
		errs = append(errs, fmt.Errorf("peer %s: %w", key(owner), res.Failed[owner]))
	}
	return errors.Join(errs...)
}

// update programs changes among the admitted peers, without reading the
// kernel. It returns errFullSync, having
// changed nothing, when a change needs a backend that is not running.
func (r *Reconciler) update(ctx context.Context, changes []change, peers *peerSet) error {
	for _, c := range changes {
		for _, p := range [...]*peer{c.old, c.new} {
			if p == nil {
				continue
			}
			if b, ok := r.backends.active[p.lease.BackendType]; !ok || !b.setUp {
				return errFullSync
			}
		}
	}
	kc := make([]kernel.Change, len(changes))
	for i, c := range changes {
		kc[i].Owner = i
		if c.old != nil {
			kc[i].Old = &kernel.Entries{}
			r.backends.active[c.old.lease.BackendType].Peer(&c.old.lease, r.underlay, kc[i].Old)
		}
		if c.new != nil {
			kc[i].New = &kernel.Entries{}
			r.peer(r.backends.active[c.new.lease.BackendType], c.new, kc[i].New, peers)
		}
	}
	res := r.kernel.Update(kc)
	err := r.failed(res, func(owner int) string { return changes[owner].key })
	return errors.Join(err, r.backends.removeUnused(ctx, peers.byType))
}

// applyConfig applies a new configuration. A backend change is applied
// live: the new backend is set up, the announcement names it, and the old
// one keeps serving peers still on it (see backendSet). A change of the
// networks cannot be applied to a running node and is refused.
func (r *Reconciler) applyConfig(ctx context.Context, self *subnet.Lease, cfg *subnet.Config) {
	log := r.log.WithField("component", "config")
	cur := r.network
	if describePools(cfg) != describePools(cur) {
		r.rejectConfig(log, fmt.Sprintf("the pod networks changed (%s → %s); this cannot be applied to running nodes: keeping %s until weftd restarts",
			describePools(cur), describePools(cfg), describePools(cur)))
		return
	}
	if cfg.IPv4 != cur.IPv4 || cfg.IPv6 != cur.IPv6 {
		// SubnetMin and SubnetMax bound where new subnets are leased; a
		// lease anywhere in the network stays valid.
		log.Infof("the range of new subnets changed (%s → %s); existing leases stay where they are", describeRanges(cur), describeRanges(cfg))
	}
	r.status.ConfigIssue = ""
	if cfg.Backend == cur.Backend {
		r.network, r.backends.env.Network = cfg, cfg
		return
	}
	r.backends.env.Network = cfg
	if _, err := r.backends.setPrimary(ctx, cfg.Backend, r.ext, self); err != nil {
		r.backends.env.Network = cur
		r.rejectConfig(log, fmt.Sprintf("cannot switch to backend %s: %v; staying on %s", cfg.Backend.Type, err, cur.Backend.Type))
		return
	}
	r.network = cfg
	r.cfg.Metrics.SetBackend(cfg.Backend.Type)
	r.status.Backend = cfg.Backend.Type
	log.WithFields(logrus.Fields{"from": cur.Backend.Type, "to": cfg.Backend.Type}).
		Info("switched backend; peers still announcing the old one are served by it until they switch")
}

func (r *Reconciler) rejectConfig(log *logrus.Entry, why string) {
	log.Error(why)
	r.cfg.Metrics.ConfigRejected()
	r.status.ConfigIssue = why
	r.show()
}

// applyInterface takes over a new snapshot of the external interface. A
// new MTU or set of prefixes reaches the backends at the next full sync;
// a new address that tunnels are sent from, or that peers are told,
// re-creates the backends (the announcement then carries the address).
func (r *Reconciler) applyInterface(ctx context.Context, self *subnet.Lease, fresh *backend.ExternalInterface) {
	cur := r.ext
	r.log.WithFields(logrus.Fields{"interface": fresh.Name, "addresses": fresh.Addrs, "mtu": fresh.MTU, "was": cur.Addrs, "mtu_was": cur.MTU}).
		Warn("the external interface changed")
	moved := fresh.LocalIP != cur.LocalIP || fresh.LocalIPv6 != cur.LocalIPv6 ||
		fresh.PublicIP != cur.PublicIP || fresh.PublicIPv6 != cur.PublicIPv6
	if !moved {
		r.ext = fresh
		return
	}
	if (r.network.IPv4.Enabled() && !fresh.PublicIP.IsValid()) || (r.network.IPv6.Enabled() && !fresh.PublicIPv6.IsValid()) {
		r.log.Warn("the external interface lost the address peers reach this node at; waiting for a new one")
		return
	}
	r.ext = fresh
	if err := r.backends.rebuild(ctx, fresh, self); err != nil {
		r.log.WithError(err).Error("re-creating the backends for the new address")
	}
}

// describePools names c's pod networks and subnet lengths.
func describePools(c *subnet.Config) string {
	var s string
	for _, p := range c.Pools() {
		if s != "" {
			s += " and "
		}
		s += fmt.Sprintf("%s/%d subnets", p.Network, p.SubnetLen)
	}
	return s
}

// describeRanges names the ranges new subnets of c are leased from.
func describeRanges(c *subnet.Config) string {
	var s string
	for _, p := range c.Pools() {
		if s != "" {
			s += " and "
		}
		s += fmt.Sprintf("%s–%s", netip.PrefixFrom(p.Min, p.SubnetLen), netip.PrefixFrom(p.Max, p.SubnetLen))
	}
	return s
}
