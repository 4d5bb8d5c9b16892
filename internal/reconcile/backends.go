package reconcile

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/hostgw"
	"github.com/weft-net/weft/backend/ipip"
	"github.com/weft-net/weft/backend/vxlan"
	"github.com/weft-net/weft/subnet"
)

// Constructors maps each backend type weftd can run to its constructor.
var Constructors = map[string]backend.Constructor{
	subnet.BackendVXLAN:  func(env backend.Env) (backend.Backend, error) { return vxlan.New(env) },
	subnet.BackendHostGW: func(env backend.Env) (backend.Backend, error) { return hostgw.New(env) },
	subnet.BackendIPIP:   func(env backend.Env) (backend.Backend, error) { return ipip.New(env) },
}

// backendSet is every backend this node runs. The primary one is the
// configured backend, whose type the node's lease announces; the others
// exist because some peer still announces their type. Each peer is
// programmed by the backend of its own type, so during a rolling switch
// every pair of nodes stays connected: a node that has switched still
// sends to an old-type peer the old way, and that peer reaches it the new
// way. A non-primary backend no peer uses any more is torn down. Owned by
// the reconciler's goroutine.
type backendSet struct {
	env          backend.Env // Network is the current configuration
	constructors map[string]backend.Constructor
	log          *logrus.Entry
	primary      string
	active       map[string]*running
}

// running is one backend, the options it was made with, and what its last
// Setup said.
type running struct {
	backend.Backend
	options   subnet.Backend
	published backend.Published
	// setUp is false when the last Setup failed: the backend's peers
	// cannot be programmed until one succeeds.
	setUp bool
}

func (s *backendSet) names() []string {
	var names []string
	for _, t := range subnet.BackendTypes {
		if _, ok := s.constructors[t]; ok {
			names = append(names, t)
		}
	}
	return names
}

// start makes (or re-makes, when its options changed) the backend for
// opts and sets it up for ext and self.
func (s *backendSet) start(ctx context.Context, opts subnet.Backend, ext *backend.ExternalInterface, self *subnet.Lease) (*running, error) {
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
	newBackend, ok := s.constructors[opts.Type]
	if !ok {
		return nil, fmt.Errorf("backend %q is not available in this weftd (it has %s)", opts.Type, strings.Join(s.names(), ", "))
	}
	cfg := *s.env.Network
	cfg.Backend = opts
	env := s.env
	env.Network = &cfg
	b, err := newBackend(env)
	if err != nil {
		return nil, err
	}
	pub, err := b.Setup(ctx, ext, self)
	if err != nil {
		return nil, fmt.Errorf("setting up the %s backend: %w", opts.Type, err)
	}
	r := &running{Backend: b, options: opts, published: pub, setUp: true}
	s.active[opts.Type] = r
	return r, nil
}

// setPrimary makes opts the node's backend. The previous primary keeps
// serving peers of its type until none is left.
func (s *backendSet) setPrimary(ctx context.Context, opts subnet.Backend, ext *backend.ExternalInterface, self *subnet.Lease) (*running, error) {
	r, err := s.start(ctx, opts, ext, self)
	if err != nil {
		return nil, err
	}
	s.primary = opts.Type
	return r, nil
}

func (s *backendSet) primaryBackend() *running { return s.active[s.primary] }

// rebuild tears every backend down and sets the primary up again, for a
// new external address; backends for peers come back with the next sync.
func (s *backendSet) rebuild(ctx context.Context, ext *backend.ExternalInterface, self *subnet.Lease) error {
	opts := s.active[s.primary].options
	for t, r := range s.active {
		if err := r.Teardown(ctx); err != nil {
			return fmt.Errorf("tearing down %s: %w", t, err)
		}
		delete(s.active, t)
	}
	_, err := s.setPrimary(ctx, opts, ext, self)
	return err
}

// serve returns the backend for peers of type t, starting it with its
// default options if needed, or the reason it cannot run here.
func (s *backendSet) serve(ctx context.Context, t string, ext *backend.ExternalInterface, self *subnet.Lease) (*running, error) {
	if r, ok := s.active[t]; ok {
		return r, nil
	}
	r, err := s.start(ctx, subnet.Backend{Type: t, VNI: 1}, ext, self)
	if err != nil {
		return nil, err
	}
	s.log.WithField("backend", t).Info("started a backend for peers that announce it")
	return r, nil
}

// setUpAll runs every backend's Setup again (idempotent): a device deleted
// by hand comes back, a new MTU is applied.
func (s *backendSet) setUpAll(ctx context.Context, ext *backend.ExternalInterface, self *subnet.Lease) error {
	var errs []error
	for _, t := range slices.Sorted(maps.Keys(s.active)) { // deterministic order of work and errors
		r := s.active[t]
		pub, err := r.Setup(ctx, ext, self)
		r.setUp = err == nil
		if err != nil {
			errs = append(errs, fmt.Errorf("setting up the %s backend: %w", t, err))
			continue
		}
		r.published = pub
	}
	return errors.Join(errs...)
}

// links returns the devices of every backend whose neighbour and FDB
// entries are weft's.
func (s *backendSet) links() []int {
	var links []int
	for _, r := range s.active {
		links = append(links, r.Links()...)
	}
	return links
}

// devices returns the names of every backend's devices.
func (s *backendSet) devices() map[string]bool {
	owned := map[string]bool{}
	for _, r := range s.active {
		for _, d := range r.Devices() {
			owned[d] = true
		}
	}
	return owned
}

// removeUnused tears down the backends other than the primary that no
// admitted peer uses any more (inUse counts them by type).
func (s *backendSet) removeUnused(ctx context.Context, inUse map[string]int) error {
	var errs []error
	for t, r := range s.active {
		if t == s.primary || inUse[t] > 0 {
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
