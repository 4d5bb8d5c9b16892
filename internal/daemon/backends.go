package daemon

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

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
	// installRoutes makes weft's routes equal the given ones; with verify
	// it reads the kernel first.
	installRoutes func(routes []backend.Route, verify bool) error
}

// running is one backend and the options it was made with.
type running struct {
	backend.Backend
	options   subnet.Backend
	published backend.Published
}

func newBackendSet(env backend.Env, log *logrus.Entry) *backendSet {
	s := &backendSet{env: env, log: log, active: map[string]*running{}}
	table := backend.NewRouteTable(env.Netlink)
	s.installRoutes = func(routes []backend.Route, verify bool) error {
		_, err := table.Sync(routes, verify)
		return err
	}
	return s
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

// sync programs every peer with the backend of its type, installs the
// union of their routes, and tears down backends no longer needed.
func (s *backendSet) sync(ctx context.Context, self subnet.Lease, peers map[string]subnet.Lease, verify bool) (backend.Stats, error) {
	defer s.once.EndSync()
	byType := map[string][]subnet.Lease{s.primary: nil}
	for _, p := range peers {
		byType[p.BackendType] = append(byType[p.BackendType], p)
	}
	types := make([]string, 0, len(byType))
	for t := range byType {
		types = append(types, t)
	}
	sort.Strings(types) // deterministic order of work and errors

	var total backend.Stats
	var routes []backend.Route
	var errs []error
	for _, t := range types {
		ps := byType[t]
		r, ok := s.active[t]
		if !ok {
			var err error
			if r, err = s.start(ctx, subnet.Backend{Type: t, VNI: 1}); err != nil {
				total.OtherType += len(ps)
				for _, p := range ps {
					s.once.Warn(s.log, p.Key(), fmt.Sprintf("cannot serve a peer announcing backend %q: %v", t, err))
				}
				continue
			}
			s.log.WithFields(logrus.Fields{"backend": t, "peers": len(ps)}).Info("started a backend for peers that announce it")
		}
		rs, st, err := r.Sync(ctx, self, ps, verify)
		routes = append(routes, rs...)
		total.Programmed += st.Programmed
		total.Unreachable += st.Unreachable
		total.OtherType += st.OtherType
		total.Direct += st.Direct
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", t, err))
		}
	}
	if err := s.installRoutes(routes, verify); err != nil {
		errs = append(errs, err)
	}
	for t, r := range s.active {
		if t == s.primary || len(byType[t]) > 0 {
			continue
		}
		if err := r.Teardown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("tearing down %s: %w", t, err))
			continue
		}
		delete(s.active, t)
		s.log.WithField("backend", t).Info("no peer uses the backend any more; removed it")
	}
	return total, errors.Join(errs...)
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
