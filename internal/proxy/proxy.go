// Package proxy is the one owner of this node's service rules: it follows
// the service definitions (service/etcd), decides which of them are
// programmed (service.Validate, service.Admit), works out the rules
// (Build, rules.go) and keeps the nftables table weft-svc in step (Table,
// nft.go), as kube-proxy's nftables mode does. Everything here runs on the
// goroutine of Run; Status is safe for concurrent use.
package proxy

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/internal/bgp"
	"github.com/weft-net/weft/internal/etcdwatch"
	"github.com/weft-net/weft/internal/ratelog"
	"github.com/weft-net/weft/internal/retry"
	"github.com/weft-net/weft/internal/status"
	"github.com/weft-net/weft/service"
	"github.com/weft-net/weft/subnet"
)

// FullResync is how often the table is rewritten whole, repairing what a
// check by names cannot see (as kube-proxy's nftables mode, hourly).
const FullResync = time.Hour

// Kernel is the table the proxy programs (*Table); tests give a fake.
type Kernel interface {
	Sync(st *State, localSubnets []netip.Prefix) (int, error)
	Pending() bool
	Collect() error
	Remove() error
	// Resync makes the next Sync read the kernel and rewrite the table.
	Resync()
	// Check says what differs between the kernel and the table ("" when
	// nothing does).
	Check() (string, error)
}

// Metrics is where the proxy reports; internal/daemon implements it with
// Prometheus.
type Metrics interface {
	ObserveServiceSync(d time.Duration, err error)
}

// Config is what a Proxy starts from.
type Config struct {
	Kernel Kernel
	// Network is the network configuration at start; later ones come in
	// Inputs.Configs.
	Network *subnet.Config
	// Subnets are this node's pod subnets (its lease keeps them while
	// weftd runs): endpoints in them are local.
	Subnets []netip.Prefix
	// ResyncInterval is how often the table's chains and maps are compared
	// with the kernel's (a changed table is rewritten); it is rewritten
	// whole every FullResync anyway.
	ResyncInterval time.Duration
	// Conntrack deletes the UDP flows of endpoints that went away (nil:
	// left to expire).
	Conntrack Conntrack
	// Advertise, when this node speaks BGP, takes the service routes it
	// should advertise whenever they change (see vips).
	Advertise func([]bgp.VIP)
	Log       *logrus.Entry
	Metrics   Metrics
}

// Inputs are what Run follows.
type Inputs struct {
	// Services are batches of service events (service/etcd.Store.Watch):
	// the first is the whole listing.
	Services <-chan []etcdwatch.Event[service.Definition]
	// Configs are new valid network configurations.
	Configs <-chan *subnet.Config
}

// Proxy keeps the node's service rules in step with the definitions.
type Proxy struct {
	cfg Config
	log *logrus.Entry

	network *subnet.Config                // owned by Run
	subnets []netip.Prefix                // set at New
	defs    map[string]service.Definition // owned by Run: every definition
	listed  bool                          // owned by Run: the first listing arrived
	bad     ratelog.Limiter               // owned by Run: refused services, once per reason
	flows   map[udpFlow]bool              // owned by Run: UDP flows programmed
	checked map[string]error              // owned by Run: Validate's verdict per key
	parts   map[string]cachedState        // owned by Run: ServiceState per admitted key
	told    []bgp.VIP                     // owned by Run: last given to Advertise
	toldAny bool                          // owned by Run: Advertise was called

	status atomic.Pointer[status.Services]
}

// New returns a proxy; it touches nothing until Run.
func New(cfg Config) *Proxy {
	p := &Proxy{cfg: cfg, log: cfg.Log.WithField("component", "services"), network: cfg.Network, subnets: cfg.Subnets, defs: map[string]service.Definition{},
		checked: map[string]error{}, parts: map[string]cachedState{}}
	p.status.Store(&status.Services{Enabled: cfg.Network.Services.Enabled()})
	return p
}

// Run keeps the table in step until ctx ends. It writes nothing before
// the first listing of the services has arrived, so a weftd that restarts
// while etcd is away leaves the rules of its previous run in place; and
// nothing when ctx ends, so they stay while weftd is down.
func (p *Proxy) Run(ctx context.Context, in Inputs) error {
	var (
		dirty   = false          // definitions or inputs changed since the last sync
		failed  retry.Backoff    // between failed syncs
		retryAt <-chan time.Time // the next attempt after a failure
		collect <-chan time.Time // when to remove what nothing uses any more
		check   = time.NewTicker(p.cfg.ResyncInterval)
		rewrite = time.NewTicker(FullResync)
		removed = false // the table was removed (services off)
	)
	defer check.Stop()
	defer rewrite.Stop()
	if !p.network.Services.Enabled() {
		p.off(&removed)
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case batch := <-in.Services:
			p.apply(batch)
			dirty = true
		case cfg := <-in.Configs:
			dirty = p.setNetwork(cfg) || dirty
		case <-retryAt:
			retryAt = nil
			dirty = true
		case <-check.C:
			if !p.listed || retryAt != nil || !p.network.Services.Enabled() {
				break
			}
			drift, err := p.cfg.Kernel.Check()
			if err == nil && drift == "" {
				break
			}
			p.log.WithError(err).WithField("drift", drift).Warn("the service table differs from what weft wrote; rewriting it")
			p.cfg.Kernel.Resync()
			dirty = true
		case <-rewrite.C:
			p.cfg.Kernel.Resync()
			dirty = true
		case <-collect:
			collect = nil
			if err := p.cfg.Kernel.Collect(); err != nil {
				p.log.WithError(err).Warn("removing unused service rules failed; rewriting the table")
				dirty = true
			}
		}
		p.drain(in, &dirty)
		if !dirty || !p.listed || retryAt != nil {
			if collect == nil && p.cfg.Kernel.Pending() {
				collect = time.After(staleAfter + 100*time.Millisecond)
			}
			continue
		}
		dirty = false
		if !p.network.Services.Enabled() {
			p.off(&removed)
			continue
		}
		removed = false
		start := time.Now()
		err := p.sync()
		took := time.Since(start)
		if p.cfg.Metrics != nil {
			p.cfg.Metrics.ObserveServiceSync(took, err)
		}
		if err != nil {
			p.log.WithError(err).Warn("programming services failed; retrying")
			retryAt = time.After(failed.Next())
			p.setError(err)
			continue
		}
		failed.Reset()
		if collect == nil && p.cfg.Kernel.Pending() {
			collect = time.After(staleAfter + 100*time.Millisecond)
		}
	}
}

// drain takes whatever else has arrived, so that a burst is one sync.
func (p *Proxy) drain(in Inputs, dirty *bool) {
	for {
		select {
		case batch := <-in.Services:
			p.apply(batch)
			*dirty = true
		case cfg := <-in.Configs:
			*dirty = p.setNetwork(cfg) || *dirty
		default:
			return
		}
	}
}

// apply records a batch of definitions; the first is the whole listing.
func (p *Proxy) apply(batch []etcdwatch.Event[service.Definition]) {
	p.listed = true
	for _, ev := range batch {
		if ev.Removed {
			delete(p.defs, ev.Key)
			delete(p.checked, ev.Key)
			delete(p.parts, ev.Key)
			p.bad.Forget(ev.Key)
			continue
		}
		if ev.Item.Service != nil {
			ev.Item.Service.Created = ev.Created
		}
		p.defs[ev.Key] = ev.Item
		delete(p.checked, ev.Key)
		delete(p.parts, ev.Key)
	}
}

// vips are the service routes this node advertises over BGP, as
// BGP.AdvertiseServiceVIPs (default true), BGP.ServiceCommunities and
// BGP.AggregateServiceNetwork and each service's advertise and
// communities say: the VIPs of a Cluster service from every node (or, with
// the aggregate, each service network once), those of a Local service only
// from nodes with a ready endpoint of the VIP's family in their subnet, so
// that routers send its traffic only there.
func (p *Proxy) vips(admitted []*service.Service, node *Node) []bgp.VIP {
	advertise, aggregate, comms := true, false, []uint32(nil)
	if b := p.network.BGP; b != nil {
		advertise, aggregate = b.AdvertiseServiceVIPs, b.AggregateServiceNetwork
		for _, c := range b.ServiceCommunities {
			comms = append(comms, uint32(c))
		}
	}
	var out []bgp.VIP
	if aggregate {
		for _, n := range node.ServiceNetworks {
			out = append(out, bgp.VIP{Prefix: n, Communities: comms, Why: "service network (BGP.AggregateServiceNetwork)"})
		}
	}
	for _, s := range admitted {
		adv := advertise
		if s.Advertise != nil {
			adv = *s.Advertise
		}
		if !adv {
			continue
		}
		sc := comms
		for _, c := range s.BGPCommunities() {
			sc = append(slices.Clone(sc), uint32(c))
		}
		for _, vip := range s.VIPs {
			var why string
			switch s.TrafficPolicy {
			case service.Local:
				n := 0
				for _, e := range s.Endpoints {
					if e.IsReady() && e.Address.Is6() == vip.Is6() && node.local(e.Address) {
						n++
					}
				}
				if n == 0 {
					continue
				}
				why = fmt.Sprintf("VIP of %s: traffic policy Local, %d ready endpoint(s) on this node", s.Key(), n)
			default:
				if aggregate {
					continue
				}
				why = fmt.Sprintf("VIP of %s: traffic policy Cluster", s.Key())
			}
			out = append(out, bgp.VIP{Prefix: netip.PrefixFrom(vip, vip.BitLen()), Communities: sc, Why: why})
		}
	}
	return out
}

func sameVIP(a, b bgp.VIP) bool {
	return a.Prefix == b.Prefix && a.Why == b.Why && slices.Equal(a.Communities, b.Communities)
}

// setNetwork takes a new network configuration and reports whether it
// changes what services become (then what was worked out for the old one
// is forgotten).
func (p *Proxy) setNetwork(cfg *subnet.Config) bool {
	same := sameServices(p.network, cfg)
	sameBGP := p.network.BGP.Equal(cfg.BGP)
	p.network = cfg
	if !same {
		clear(p.checked)
		clear(p.parts)
	}
	return !same || !sameBGP
}

// sameServices reports whether two configurations program the same
// services: the same service and pod networks and node port range.
func sameServices(a, b *subnet.Config) bool {
	if a.Services != b.Services || len(a.Pools()) != len(b.Pools()) {
		return false
	}
	for i, pool := range a.Pools() {
		if pool.Network != b.Pools()[i].Network {
			return false
		}
	}
	return true
}

// off removes the table once when services are turned off (no
// ServiceNetwork and no ServiceIPv6Network).
func (p *Proxy) off(removed *bool) {
	if *removed {
		return
	}
	*removed = true
	if err := p.cfg.Kernel.Remove(); err != nil {
		p.log.WithError(err).Warn("removing the service table")
	}
	if p.cfg.Advertise != nil && (len(p.told) > 0 || !p.toldAny) {
		p.told, p.toldAny = nil, true
		p.cfg.Advertise(nil)
	}
	p.status.Store(&status.Services{Enabled: false})
}

// sync programs every valid, admitted service.
func (p *Proxy) sync() error {
	valid := make([]*service.Service, 0, len(p.defs))
	var refused []status.RefusedService
	for key, def := range p.defs {
		svc, err := def.Service, def.Err
		if err == nil {
			var known bool
			if err, known = p.checked[key]; !known {
				err = svc.Validate(p.network)
				p.checked[key] = err
			}
		}
		if err != nil {
			refused = append(refused, status.RefusedService{Service: key, Problem: err.Error()})
			if p.bad.Allow(key, err.Error()) {
				p.log.WithField("service", key).WithError(err).Warn("ignoring invalid service")
			}
			continue
		}
		valid = append(valid, svc)
	}
	admitted, conflicts := service.Admit(valid)
	for _, err := range conflicts {
		c := err.(*service.Conflict)
		refused = append(refused, status.RefusedService{Service: c.Service, Problem: err.Error()})
		if p.bad.Allow(c.Service, err.Error()) {
			p.log.WithField("service", c.Service).WithError(err).Warn("ignoring service: it claims what another holds")
		}
	}
	p.bad.Round() // services no longer refused are logged again if they are refused again
	node := &Node{Subnets: p.subnets}
	for _, pool := range p.network.Pools() {
		node.PodNetworks = append(node.PodNetworks, pool.Network)
	}
	for _, n := range []netip.Prefix{p.network.Services.IPv4, p.network.Services.IPv6} {
		if n.IsValid() {
			node.ServiceNetworks = append(node.ServiceNetworks, n)
		}
	}
	states := make([]*State, len(admitted))
	for i, svc := range admitted {
		part, ok := p.parts[svc.Key()]
		if !ok || part.svc != svc {
			part = cachedState{svc: svc, st: ServiceState(svc, node)}
			p.parts[svc.Key()] = part
		}
		states[i] = part.st
	}
	st := Merge(states, node)
	changed, err := p.cfg.Kernel.Sync(st, p.subnets)
	if err != nil {
		return err
	}
	flows := udpFlows(admitted)
	var gone []udpFlow
	for f := range p.flows {
		if !flows[f] {
			gone = append(gone, f)
		}
	}
	p.flows = flows
	if len(gone) > 0 && p.cfg.Conntrack != nil {
		if err := forgetFlows(p.cfg.Conntrack, gone); err != nil {
			p.log.WithError(err).Warn("deleting the conntrack entries of UDP endpoints that went away")
		}
	}
	if p.cfg.Advertise != nil {
		if vips := p.vips(admitted, node); !p.toldAny || !slices.EqualFunc(vips, p.told, sameVIP) {
			p.told, p.toldAny = vips, true
			p.cfg.Advertise(vips)
		}
	}
	slices.SortFunc(refused, func(a, b status.RefusedService) int { return strings.Compare(a.Service, b.Service) })
	prev := p.status.Load()
	next := &status.Services{
		Enabled: true, Programmed: st.Services, Endpoints: st.Endpoints, Refused: refused,
		LastChange: prev.LastChange,
	}
	for _, n := range node.ServiceNetworks {
		next.Networks = append(next.Networks, n.String())
	}
	if changed > 0 {
		next.LastChange = time.Now()
		p.log.WithFields(logrus.Fields{"services": st.Services, "endpoints": st.Endpoints, "changes": changed}).Debug("services programmed")
	}
	p.status.Store(next)
	return nil
}

func (p *Proxy) setError(err error) {
	next := *p.status.Load()
	next.LastError = err.Error()
	p.status.Store(&next)
}

// cachedState is the part of the table worked out for one definition.
type cachedState struct {
	svc *service.Service
	st  *State
}

// Status returns what the proxy has programmed.
func (p *Proxy) Status() *status.Services { return p.status.Load() }
