package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/hostgw"
	"github.com/weft-net/weft/backend/ipip"
	"github.com/weft-net/weft/backend/vxlan"
	"github.com/weft-net/weft/subnet"
)

// constructors maps each backend type to its constructor.
var constructors = map[string]func(backend.Env) (backend.Backend, error){
	subnet.BackendVXLAN:  func(env backend.Env) (backend.Backend, error) { return vxlan.New(env) },
	subnet.BackendHostGW: func(env backend.Env) (backend.Backend, error) { return hostgw.New(env) },
	subnet.BackendIPIP:   func(env backend.Env) (backend.Backend, error) { return ipip.New(env) },
}

func backendNames() []string {
	var names []string
	for _, t := range subnet.BackendTypes {
		if _, ok := constructors[t]; ok {
			names = append(names, t)
		}
	}
	return names
}

// backendSet is every backend this node runs. The primary one is the
// configured backend, whose type the node's lease announces; the others
// exist because some peer still announces their type. Each peer is
// programmed by the backend of its own type, so during a rolling switch
// every pair of nodes stays connected: a node that has switched still
// sends to an old-type peer the old way, and that peer reaches it the new
// way. A non-primary backend no peer uses any more is torn down. Used by the
// sync loop's goroutine only.
type backendSet struct {
	env     backend.Env // template; Network.Backend is set per backend
	log     *logrus.Entry
	primary string
	active  map[string]*running
	once    backend.LogOnce
	routes  routeWriter
}

// routeWriter installs the union of the backends' routes.
type routeWriter interface {
	// sync makes weft's routes equal want, reading the kernel first.
	sync(want []backend.Route) error
	// apply installs and deletes what an update changed.
	apply(d backend.RouteDelta) error
}

// kernelRoutes is the routeWriter of a network namespace.
type kernelRoutes struct{ h netlinksafe.Handle }

func (k kernelRoutes) sync(want []backend.Route) error {
	_, err := backend.SyncRoutes(k.h, want)
	return err
}

func (k kernelRoutes) apply(d backend.RouteDelta) error { return backend.ApplyRoutes(k.h, d) }

// running is one backend and the options it was made with.
type running struct {
	backend.Backend
	options   subnet.Backend
	published backend.Published
}

func newBackendSet(env backend.Env, log *logrus.Entry) *backendSet {
	return &backendSet{env: env, log: log, active: map[string]*running{}, routes: kernelRoutes{env.Netlink}}
}

// start makes (or re-makes, when its options changed) the backend for
// opts and sets it up.
func (s *backendSet) start(ctx context.Context, opts subnet.Backend) (*running, error) {
	if r, ok := s.active[opts.Type]; ok {
		if r.options == opts {
			return r, nil
		}
		s.log.WithField("backend", opts.Type).Info("backend options changed; re-creating it")
		if err := r.Teardown(ctx); err != nil {
			return nil, err
		}
		delete(s.active, opts.Type)
	}
	newBackend, ok := constructors[opts.Type]
	if !ok {
		return nil, fmt.Errorf("backend %q is not available in this weftd (it has %s)", opts.Type, strings.Join(backendNames(), ", "))
	}
	cfg := *s.env.Network
	cfg.Backend = opts
	env := s.env
	env.Network = &cfg
	b, err := newBackend(env)
	if err != nil {
		return nil, err
	}
	pub, err := b.Setup(ctx)
	if err != nil {
		return nil, fmt.Errorf("setting up the %s backend: %w", opts.Type, err)
	}
	r := &running{Backend: b, options: opts, published: pub}
	s.active[opts.Type] = r
	return r, nil
}

// setPrimary makes opts the node's backend and returns what its lease must
// publish. The previous primary keeps serving peers of its type until none
// is left.
func (s *backendSet) setPrimary(ctx context.Context, opts subnet.Backend) (*running, error) {
	r, err := s.start(ctx, opts)
	if err != nil {
		return nil, err
	}
	s.primary = opts.Type
	return r, nil
}

func (s *backendSet) primaryBackend() *running { return s.active[s.primary] }

// rebuild tears every backend down and sets the primary up again, for a
// new external address; backends for peers come back with the next sync.
func (s *backendSet) rebuild(ctx context.Context) (*running, error) {
	opts := s.active[s.primary].options
	for t, r := range s.active {
		if err := r.Teardown(ctx); err != nil {
			return nil, fmt.Errorf("tearing down %s: %w", t, err)
		}
		delete(s.active, t)
	}
	return s.setPrimary(ctx, opts)
}

// syncAll programs every admitted peer with the backend of its type,
// reading the kernel, installs the union of their routes, records each
// peer's state and tears down backends no longer needed.
func (s *backendSet) syncAll(ctx context.Context, self subnet.Lease, peers *peerSet) error {
	defer s.once.EndSync()
	byType := map[string][]*peer{s.primary: nil}
	for _, p := range peers.admitted() {
		byType[p.lease.BackendType] = append(byType[p.lease.BackendType], p)
	}
	var routes []backend.Route
	var errs []error
	for _, t := range slices.Sorted(maps.Keys(byType)) { // deterministic order of work and errors
		group := byType[t]
		r := s.serve(ctx, t, group, peers)
		if r == nil {
			continue
		}
		leases := make([]*subnet.Lease, len(group))
		for i, p := range group {
			leases[i] = &p.lease
		}
		rs, states, err := r.Sync(ctx, self, leases)
		for i := range min(len(states), len(group)) {
			peers.setState(group[i], states[i])
		}
		routes = append(routes, rs...)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t, err))
		}
	}
	if err := s.routes.sync(routes); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(append(errs, s.removeUnused(ctx, peers))...)
}

// serve returns the backend for peers of type t, starting it if needed.
// When it cannot be started, the peers are marked OtherType and it
// returns nil.
func (s *backendSet) serve(ctx context.Context, t string, group []*peer, peers *peerSet) *running {
	if r, ok := s.active[t]; ok {
		return r
	}
	r, err := s.start(ctx, subnet.Backend{Type: t, VNI: 1})
	if err != nil {
		for _, p := range group {
			peers.setState(p, backend.OtherType)
			s.once.Warn(s.log, p.lease.Key(), fmt.Sprintf("cannot serve a peer announcing backend %q: %v", t, err))
		}
		return nil
	}
	s.log.WithFields(logrus.Fields{"backend": t, "peers": len(group)}).Info("started a backend for peers that announce it")
	return r
}

// errFullSync says that changes need a full sync: a peer announces a
// backend this node does not run yet.
var errFullSync = errors.New("a full sync is needed")

// update programs the changes of one or more batches of lease events with
// the backends of the peers' types, without reading the kernel. It returns
// errFullSync, having changed nothing, when a change needs a backend that
// is not running.
func (s *backendSet) update(ctx context.Context, self subnet.Lease, changes []change, peers *peerSet) error {
	// A peer that changes backend leaves one and joins the other.
	byType := map[string][]backend.Change{}
	newPeers := map[string][]*peer{} // parallel to byType: the peer of each New
	add := func(t string, c backend.Change, p *peer) {
		byType[t] = append(byType[t], c)
		newPeers[t] = append(newPeers[t], p)
	}
	for _, c := range changes {
		switch {
		case c.old == nil:
			add(c.new.lease.BackendType, backend.Change{New: &c.new.lease}, c.new)
		case c.new == nil:
			add(c.old.lease.BackendType, backend.Change{Old: &c.old.lease}, nil)
		case c.old.lease.BackendType == c.new.lease.BackendType:
			add(c.new.lease.BackendType, backend.Change{Old: &c.old.lease, New: &c.new.lease}, c.new)
		default:
			add(c.old.lease.BackendType, backend.Change{Old: &c.old.lease}, nil)
			add(c.new.lease.BackendType, backend.Change{New: &c.new.lease}, c.new)
		}
	}
	for t := range byType {
		if _, ok := s.active[t]; !ok {
			return errFullSync
		}
	}
	var delta backend.RouteDelta
	var errs []error
	for _, t := range slices.Sorted(maps.Keys(byType)) {
		d, states, err := s.active[t].Update(ctx, self, byType[t])
		for i, p := range newPeers[t] {
			if p != nil && i < len(states) {
				peers.setState(p, states[i])
			}
		}
		delta.Add = append(delta.Add, d.Add...)
		delta.Del = append(delta.Del, d.Del...)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t, err))
		}
	}
	if err := s.routes.apply(delta); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(append(errs, s.removeUnused(ctx, peers))...)
}

// removeUnused tears down the backends other than the primary that no
// admitted peer uses any more.
func (s *backendSet) removeUnused(ctx context.Context, peers *peerSet) error {
	var errs []error
	for t, r := range s.active {
		if t == s.primary || peers.byType[t] > 0 {
			continue
		}
		if err := r.Teardown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("tearing down %s: %w", t, err))
			continue
		}
		delete(s.active, t)
		s.log.WithField("backend", t).Info("no peer uses the backend any more; removed it")
	}
	return errors.Join(errs...)
}

// sweep deletes weft devices (weft.*, weft-*) that no running backend
// owns: leftovers of a backend this node ran before a restart.
func (s *backendSet) sweep() {
	owned := map[string]bool{}
	for _, r := range s.active {
		for _, d := range r.Devices() {
			owned[d] = true
		}
	}
	links, err := s.env.Netlink.LinkList()
	if err != nil {
		s.log.WithError(err).Warn("listing devices to remove leftovers")
		return
	}
	for _, l := range links {
		name := l.Attrs().Name
		if !strings.HasPrefix(name, "weft.") && !strings.HasPrefix(name, "weft-") || owned[name] {
			continue
		}
		if err := s.env.Netlink.LinkDel(l); err != nil {
			s.log.WithError(err).WithField("device", name).Warn("cannot remove a leftover device")
			continue
		}
		s.log.WithField("device", name).Info("removed a device of a backend this node no longer runs")
	}
}
