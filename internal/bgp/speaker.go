// Package bgp is weftd's BGP speaker, GoBGP embedded: it advertises this
// node's own prefixes (its pod subnets; service VIPs) to the configured
// routers, never passes on what it learns and never installs it, so the
// data path between nodes does not depend on it. Stopping keeps the
// routers' routes (graceful restart): a restarting weftd loses nothing, a
// node gone for good is withdrawn when its restart time runs out.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/config/oc"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/internal/ratelog"
	"github.com/weft-net/weft/internal/status"
)

// Timers of every session: a router that is down is dialled again every
// few seconds (GoBGP's default waits two minutes), and a restarting node
// waits at most deferral for the routers' End-of-RIB before it advertises.
const (
	connectRetry = 5 * time.Second
	holdTime     = 90 * time.Second
	deferral     = 10 * time.Second
	// statusEvery is how often the sessions' counters are read.
	statusEvery = 5 * time.Second
	// downLogEvery is how often a session that stays down is reported.
	downLogEvery = 10 * time.Second
)

// Config is what the speaker starts with; what can change while it runs
// is in Options.
type Config struct {
	ASN      uint32
	RouterID netip.Addr // IPv4
	// ListenPort is the port routers may connect to; 0: none, this node
	// only dials.
	ListenPort int
	// GracefulRestart is how long routers keep this node's routes while
	// weftd restarts.
	GracefulRestart time.Duration
	Log             *logrus.Entry
}

// Options are the speaker's settings that the cluster's configuration
// changes while it runs.
type Options struct {
	Peers []Peer
	// Communities go on every route.
	Communities []uint32
	// PodSubnets advertises this node's pod subnets.
	PodSubnets bool
}

// Node is what this node advertises: its subnets, reached at its public
// addresses.
type Node struct {
	Subnets              []netip.Prefix
	PublicIP, PublicIPv6 netip.Addr
}

// Peer is a router this node peers with.
type Peer struct {
	Address netip.Addr
	ASN     uint32
	Port    uint16
	// Password is the TCP MD5 password; never logged or reported.
	Password string
}

func (p Peer) String() string { return fmt.Sprintf("%s (AS %d)", p.Address, p.ASN) }

// Route is a prefix this node originates.
type Route struct {
	Prefix      netip.Prefix
	NextHop     netip.Addr
	Communities []uint32
	// Why says what the route is for ("pod subnet"), for the status.
	Why string
}

func (r Route) same(o Route) bool {
	return r.Prefix == o.Prefix && r.NextHop == o.NextHop && slices.Equal(r.Communities, o.Communities)
}

// vipWait is how long Run waits for the first service routes.
const vipWait = 10 * time.Second

// Inputs are what Run follows; each sends the whole new value when it
// changes.
type Inputs struct {
	// Node is this node's lease; Run advertises nothing before the first.
	Node <-chan Node
	// Options are the settings of the cluster's configuration.
	Options <-chan Options
	// VIPs are the service routes to advertise (internal/proxy decides
	// which); nil when there are none.
	VIPs <-chan []VIP
}

// VIP is a service route: a VIP (/32, /128) or a whole service network,
// advertised with this node's address of its family as next hop.
type VIP struct {
	Prefix netip.Prefix
	// Communities go on the route besides Options.Communities.
	Communities []uint32
	// Why says why this node advertises it, for the status.
	Why string
}

// Speaker is this node's BGP speaker. Run is its goroutine; Status is safe
// for concurrent use.
type Speaker struct {
	cfg Config
	log *logrus.Entry

	srv   *server.BgpServer      // owned by Run
	node  Node                   // owned by Run
	vips  []VIP                  // owned by Run
	opts  Options                // owned by Run
	held  map[netip.Prefix]Route // owned by Run: advertised
	conf  map[netip.Addr]Peer    // owned by Run: configured
	downs ratelog.Limiter        // sessions that stay down, every downLogEvery
	warn  ratelog.Limiter        // what cannot be advertised, once
	stop  atomic.Bool            // Run is stopping the server

	mu         sync.Mutex
	peers      map[netip.Addr]*peerInfo // guarded by mu
	advertised []Route                  // guarded by mu
}

// peerInfo is what the speaker knows of one session.
type peerInfo struct {
	peer     Peer
	state    bgp.FSMState
	since    time.Time // when the state was entered
	sent     uint64
	received uint64
	// cause is why the session is not established, in words.
	cause string
}

// New returns a speaker with the options it starts with; it starts
// nothing until Run.
func New(cfg Config, opts Options) *Speaker {
	return &Speaker{
		cfg: cfg, opts: opts, log: cfg.Log.WithField("component", "bgp"),
		held: map[netip.Prefix]Route{}, conf: map[netip.Addr]Peer{},
		peers: map[netip.Addr]*peerInfo{}, downs: ratelog.Limiter{Every: downLogEvery},
	}
}

// Run runs the speaker until ctx ends. It waits for this node's lease and
// (up to vipWait) its first service routes, starts GoBGP, advertises the node's routes, and only then adds the peers
// (as a restarting speaker, so routers that kept this node's routes keep
// them); afterwards it follows in. When ctx ends it stops without a
// NOTIFICATION, so that routers keep the routes for the graceful-restart
// time.
func (s *Speaker) Run(ctx context.Context, in Inputs) error {
	select {
	case s.node = <-in.Node:
	case <-ctx.Done():
		return ctx.Err()
	}
	// Routers that kept this node's routes over a restart drop those not
	// sent again before the End-of-RIB: wait (a little) for the service
	// routes too, which come once the services are read.
	if in.VIPs != nil {
		select {
		case s.vips = <-in.VIPs:
		case <-time.After(vipWait):
			s.log.Warnf("starting BGP without service routes: none came within %v", vipWait)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := s.start(ctx); err != nil {
		return err
	}
	served := make(chan struct{})
	go func() { s.srv.Serve(); close(served) }() // GoBGP's loop; ends after StopBgp
	defer func() {
		s.shutdown()
		<-served
	}()
	if err := s.begin(ctx); err != nil {
		return err
	}
	s.advertise(s.routes())
	s.setPeers(ctx, s.opts.Peers)

	wctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the watcher GoBGP runs for WatchEvent
	if err := s.srv.WatchEvent(wctx, server.WatchEventMessageCallbacks{OnPeerUpdate: s.peerEvent}, server.WatchPeer()); err != nil {
		return fmt.Errorf("watching BGP sessions: %w", err)
	}
	tick := time.NewTicker(statusEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case s.node = <-in.Node:
			s.advertise(s.routes())
		case s.vips = <-in.VIPs:
			s.advertise(s.routes())
		case s.opts = <-in.Options:
			s.advertise(s.routes())
			s.setPeers(ctx, s.opts.Peers)
		case <-tick.C:
			s.refresh(ctx)
		}
	}
}

// start makes the GoBGP server; its API calls need Serve running.
func (s *Speaker) start(context.Context) error {
	h := &logHandler{
		entry:         s.log.WithField("gobgp", true),
		connectFailed: s.connectFailed,
		// GoBGP's Stop, after the graceful StopBgp, stops its BFD loop and
		// complains that BGP is not running: it is not, on purpose.
		drop: func(msg string) bool { return s.stop.Load() && msg == "failed to stop BGP server" },
	}
	s.srv = server.NewBgpServer(server.LoggerOption(slog.New(h), new(slog.LevelVar)))
	return nil
}

// begin starts BGP and installs the policies that make this node
// advertise only what it originates and keep nothing it learns.
func (s *Speaker) begin(ctx context.Context) error {
	port := int32(s.cfg.ListenPort)
	if port == 0 {
		port = -1 // GoBGP: no listener
	}
	err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: s.cfg.ASN, RouterId: s.cfg.RouterID.String(), ListenPort: port,
		// Only the families weft speaks: without a list GoBGP makes two
		// tables for every family it knows, each with 2048 shards (12 MB).
		Families: []uint32{
			uint32(oc.AfiSafiTypeToIntMap[oc.AFI_SAFI_TYPE_IPV4_UNICAST]),
			uint32(oc.AfiSafiTypeToIntMap[oc.AFI_SAFI_TYPE_IPV6_UNICAST]),
		},
	}})
	if err != nil {
		return fmt.Errorf("starting BGP (AS %d, router ID %s, port %d): %w", s.cfg.ASN, s.cfg.RouterID, s.cfg.ListenPort, err)
	}
	// Policies go after StartBgp, which resets them, and before the peers.
	local := &api.Policy{Name: "weft-local-only", Statements: []*api.Statement{{
		Name:       "local-only",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
	}}}
	if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: local}); err != nil {
		return fmt.Errorf("adding the BGP policy: %w", err)
	}
	for _, dir := range []api.PolicyDirection{api.PolicyDirection_POLICY_DIRECTION_EXPORT, api.PolicyDirection_POLICY_DIRECTION_IMPORT} {
		err := s.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
			Name: "global", Direction: dir, Policies: []*api.Policy{{Name: local.Name}},
			DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT,
		}})
		if err != nil {
			return fmt.Errorf("assigning the BGP policy: %w", err)
		}
	}
	return nil
}

// shutdown stops BGP without a NOTIFICATION where graceful restart was
// negotiated, so routers keep this node's routes, then GoBGP's other
// goroutines.
func (s *Speaker) shutdown() {
	s.stop.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.srv.StopBgp(ctx, &api.StopBgpRequest{AllowGracefulRestart: true}); err != nil {
		s.log.WithError(err).Warn("stopping BGP")
	}
	s.srv.Stop()
	s.log.Info("stopped BGP; routers keep this node's routes for the graceful-restart time")
}

// routes are the routes this node should advertise now.
func (s *Speaker) routes() []Route {
	var routes []Route
	nextHop := func(p netip.Prefix) (netip.Addr, bool) {
		nh := s.node.PublicIP
		if p.Addr().Is6() {
			nh = s.node.PublicIPv6
		}
		if !nh.IsValid() {
			s.warn.Warn(s.log.WithField("prefix", p), p.String(), "not advertising "+p.String()+": this node has no public address of its family for a next hop")
		}
		return nh, nh.IsValid()
	}
	if s.opts.PodSubnets {
		for _, sn := range s.node.Subnets {
			if nh, ok := nextHop(sn); ok {
				routes = append(routes, Route{Prefix: sn, NextHop: nh, Communities: s.opts.Communities, Why: "pod subnet of this node"})
			}
		}
	}
	for _, v := range s.vips {
		if nh, ok := nextHop(v.Prefix); ok {
			comms := s.opts.Communities
			if len(v.Communities) > 0 {
				comms = append(slices.Clone(comms), v.Communities...)
			}
			routes = append(routes, Route{Prefix: v.Prefix, NextHop: nh, Communities: comms, Why: v.Why})
		}
	}
	return routes
}

// advertise makes the advertised routes want: new and changed ones are
// added (replacing), the rest withdrawn.
func (s *Speaker) advertise(want []Route) {
	wanted := make(map[netip.Prefix]Route, len(want))
	var add []*apiutil.Path
	for _, r := range want {
		wanted[r.Prefix] = r
		if h, ok := s.held[r.Prefix]; ok && h.same(r) {
			continue
		}
		p, err := path(r)
		if err != nil {
			s.log.WithError(err).WithField("prefix", r.Prefix).Error("cannot advertise")
			continue
		}
		add = append(add, p)
		s.held[r.Prefix] = r
	}
	var del []*apiutil.Path
	for pfx, r := range s.held {
		if _, ok := wanted[pfx]; ok {
			continue
		}
		if p, err := path(r); err == nil {
			del = append(del, p)
		}
		delete(s.held, pfx)
	}
	if len(add) > 0 {
		res, err := s.srv.AddPath(apiutil.AddPathRequest{Paths: add})
		if err != nil {
			s.log.WithError(err).Error("advertising routes")
		}
		for i, r := range res {
			if r.Error != nil {
				s.log.WithError(r.Error).WithField("prefix", add[i].Nlri.String()).Error("advertising a route")
			}
		}
	}
	if len(del) > 0 {
		if err := s.srv.DeletePath(apiutil.DeletePathRequest{Paths: del}); err != nil {
			s.log.WithError(err).Error("withdrawing routes")
		}
	}
	if len(add) > 0 || len(del) > 0 {
		s.log.WithFields(logrus.Fields{"advertised": len(add), "withdrawn": len(del), "routes": len(s.held)}).Info("BGP routes changed")
	}
	routes := slices.SortedFunc(maps.Values(s.held), func(a, b Route) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	s.mu.Lock()
	s.advertised = routes
	s.mu.Unlock()
}

// path is r as GoBGP takes it: IPv4 with a NEXT_HOP, IPv6 with an
// explicit IPv6 next hop in MP_REACH (routers drop "::").
func path(r Route) (*apiutil.Path, error) {
	nlri, err := bgp.NewIPAddrPrefix(r.Prefix)
	if err != nil {
		return nil, err
	}
	if r.Prefix.Addr().Is4() != r.NextHop.Is4() {
		return nil, fmt.Errorf("%s has a next hop of the other family (%s)", r.Prefix, r.NextHop)
	}
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	family := bgp.RF_IPv4_UC
	if r.Prefix.Addr().Is4() {
		nh, err := bgp.NewPathAttributeNextHop(r.NextHop)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, nh)
	} else {
		family = bgp.RF_IPv6_UC
		mp, err := bgp.NewPathAttributeMpReachNLRI(family, []bgp.PathNLRI{{NLRI: nlri}}, r.NextHop)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, mp)
	}
	if len(r.Communities) > 0 {
		attrs = append(attrs, bgp.NewPathAttributeCommunities(r.Communities))
	}
	return &apiutil.Path{Family: family, Nlri: nlri, Attrs: attrs}, nil
}

// setPeers makes the sessions those of peers: new peers are added, gone
// ones deleted, changed ones re-made.
func (s *Speaker) setPeers(ctx context.Context, peers []Peer) {
	want := map[netip.Addr]Peer{}
	for _, p := range peers {
		want[p.Address] = p
	}
	for addr, p := range s.conf {
		if w, ok := want[addr]; ok && w == p {
			continue
		}
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			s.log.WithError(err).WithField("peer", p.String()).Warn("removing a BGP peer")
		}
		delete(s.conf, addr)
		s.mu.Lock()
		delete(s.peers, addr)
		s.mu.Unlock()
		s.downs.Forget(addr.String())
	}
	for _, addr := range slices.SortedFunc(maps.Keys(want), netip.Addr.Compare) {
		p := want[addr]
		if _, ok := s.conf[addr]; ok {
			continue
		}
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.apiPeer(p)}); err != nil {
			s.log.WithError(err).WithField("peer", p.String()).Error("adding a BGP peer")
			continue
		}
		s.conf[addr] = p
		s.mu.Lock()
		s.peers[addr] = &peerInfo{peer: p, state: bgp.BGP_FSM_IDLE, since: time.Now(), cause: "connecting"}
		s.mu.Unlock()
		s.log.WithFields(logrus.Fields{"peer": p.Address, "peer_asn": p.ASN, "port": p.Port}).Info("peering")
	}
}

// apiPeer is p as GoBGP takes it: IPv4 and IPv6 unicast on one session,
// graceful restart on both, as a restarting speaker (which is harmless on
// a first start and keeps the routes on a restart).
func (s *Speaker) apiPeer(p Peer) *api.Peer {
	var families []*api.AfiSafi
	for _, f := range []*api.Family{
		{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST},
		{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST},
	} {
		families = append(families, &api.AfiSafi{
			Config:            &api.AfiSafiConfig{Family: f, Enabled: true},
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}},
		})
	}
	return &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: p.Address.String(), PeerAsn: p.ASN, AuthPassword: p.Password},
		Transport: &api.Transport{RemotePort: uint32(p.Port), PassiveMode: false},
		Timers: &api.Timers{Config: &api.TimersConfig{
			ConnectRetry: uint64(connectRetry / time.Second), HoldTime: uint64(holdTime / time.Second),
		}},
		GracefulRestart: &api.GracefulRestart{
			Enabled: true, RestartTime: uint32(s.cfg.GracefulRestart / time.Second),
			LocalRestarting: true, DeferralTime: uint32(deferral / time.Second),
		},
		AfiSafis: families,
	}
}

// peerEvent records a session's state change, and says so when a session
// comes up or goes down.
func (s *Speaker) peerEvent(ev *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
	if ev.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	st := ev.Peer.State
	s.mu.Lock()
	info, ok := s.peers[st.NeighborAddress]
	if !ok || info.state == st.SessionState {
		s.mu.Unlock()
		return
	}
	was := info.state
	info.state, info.since = st.SessionState, time.Now()
	switch {
	case st.SessionState == bgp.BGP_FSM_ESTABLISHED:
		info.cause = ""
	case was == bgp.BGP_FSM_ESTABLISHED:
		info.cause = disconnectCause(st.DisconnectReason, st.DisconnectMessage)
	}
	p, cause := info.peer, info.cause
	s.mu.Unlock()
	log := s.log.WithFields(logrus.Fields{"peer": p.Address, "peer_asn": p.ASN})
	switch {
	case st.SessionState == bgp.BGP_FSM_ESTABLISHED:
		s.downs.Forget(p.Address.String())
		log.Info("BGP session up")
	case was == bgp.BGP_FSM_ESTABLISHED:
		log.WithField("cause", cause).Warn("BGP session down")
	}
}

// connectFailed records why dialling a peer failed (GoBGP reports it only
// in its log).
func (s *Speaker) connectFailed(addr netip.Addr, err string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if info, ok := s.peers[addr]; ok && info.state != bgp.BGP_FSM_ESTABLISHED {
		info.cause = connectCause(err, info.peer)
	}
}

// connectCause says in words why a connection attempt failed.
func connectCause(err string, p Peer) string {
	switch {
	case strings.Contains(err, "connection refused"):
		return fmt.Sprintf("%s refuses connections on port %d: is BGP running there, with this node as a neighbour?", p.Address, p.Port)
	case strings.Contains(err, "i/o timeout"):
		return fmt.Sprintf("no answer from %s port %d: a wrong or missing password (TCP MD5) drops the connection silently; so does a firewall", p.Address, p.Port)
	case strings.Contains(err, "no route to host"), strings.Contains(err, "network is unreachable"):
		return fmt.Sprintf("no route to %s", p.Address)
	}
	return "connecting failed: " + err
}

// disconnectCause says in words why an established session ended.
func disconnectCause(reason api.PeerState_DisconnectReason, msg string) string {
	r := strings.ToLower(strings.TrimPrefix(reason.String(), "DISCONNECT_REASON_"))
	r = strings.ReplaceAll(r, "_", " ")
	if msg != "" && !strings.Contains(strings.ReplaceAll(msg, "-", " "), r) {
		return r + ": " + msg
	}
	if msg != "" {
		return msg
	}
	return r
}

// refresh reads the sessions' counters, and reports the sessions that
// stay down, with their cause, every downLogEvery.
func (s *Speaker) refresh(ctx context.Context) {
	type counts struct{ sent, received uint64 }
	got := map[netip.Addr]counts{}
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		addr, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		if err != nil {
			return
		}
		var c counts
		for _, af := range p.GetAfiSafis() {
			c.sent += af.GetState().GetAdvertised()
			c.received += af.GetState().GetReceived()
		}
		got[addr] = c
	})
	if err != nil {
		s.log.WithError(err).Debug("listing BGP peers")
		return
	}
	var down []peerInfo
	s.mu.Lock()
	for addr, info := range s.peers {
		c := got[addr]
		info.sent, info.received = c.sent, c.received
		if info.state != bgp.BGP_FSM_ESTABLISHED {
			down = append(down, *info)
		}
	}
	s.mu.Unlock()
	for _, info := range down {
		if s.downs.Allow(info.peer.Address.String(), "down") {
			s.log.WithFields(logrus.Fields{"peer": info.peer.Address, "peer_asn": info.peer.ASN, "state": stateName(info.state),
				"for": time.Since(info.since).Truncate(time.Second).String(), "cause": info.cause}).Warn("BGP session not established")
		}
	}
}

func stateName(st bgp.FSMState) string {
	return strings.ToLower(strings.TrimPrefix(st.String(), "BGP_FSM_"))
}

// Status reports the sessions and what this node advertises.
func (s *Speaker) Status() *status.BGP {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := &status.BGP{ASN: s.cfg.ASN, RouterID: s.cfg.RouterID.String()}
	for _, addr := range slices.SortedFunc(maps.Keys(s.peers), netip.Addr.Compare) {
		info := s.peers[addr]
		p := status.BGPPeer{
			Address: addr.String(), ASN: info.peer.ASN, State: stateName(info.state),
			Since: info.since, PrefixesSent: info.sent, PrefixesReceived: info.received, Problem: info.cause,
		}
		st.Peers = append(st.Peers, p)
	}
	for _, r := range s.advertised {
		st.Advertised = append(st.Advertised, status.BGPRoute{Prefix: r.Prefix.String(), NextHop: r.NextHop.String(), Why: r.Why})
	}
	return st
}

// ErrNoRouterID is returned (by the daemon's BGP settings) for a node without an IPv4
// address to use as its router ID.
var ErrNoRouterID = errors.New("BGP needs an IPv4 router ID and this node has no IPv4 address; give --bgp-router-id")
