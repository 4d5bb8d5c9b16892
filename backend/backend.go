// Package backend defines how weft programs the kernel so that this node
// reaches every peer's pod subnet, and the helpers its backends share.
// Backends live in subpackages (vxlan, hostgw); the daemon picks one from an
// explicit map of constructors.
package backend

import (
	"context"
	"encoding/json"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/subnet"
)

// RouteProtocol is the routing protocol number on every route weft
// installs (`ip route show proto 87`). Reconciliation removes stale routes
// carrying it and never touches routes without it.
const RouteProtocol = 87

// Backend makes this node's kernel reach the peers that announce its type.
//
// A node may run several backends at once: each peer is served by the
// backend its lease names, so a cluster switching backends stays connected
// (see internal/daemon). Routes therefore have one owner: Sync and Update
// return the routes their peers need and the caller installs the union of
// all backends' routes.
//
// Sync reads the kernel and makes it hold exactly what the given peers
// need; Update applies changes to the peers since the last Sync or Update,
// trusting that the kernel still holds what the backend last programmed
// (the caller calls Sync again when it may not: periodically, on kernel
// events, after a failure). Sync may be called repeatedly with the same
// peers; it changes only the difference, so it also repairs drift.
// Backends are not safe for concurrent use: one goroutine (the daemon's
// sync loop) calls them.
type Backend interface {
	// Type is the backend's name as it appears in leases ("vxlan").
	Type() string
	// Setup creates or adopts the backend's devices and returns what the
	// node's lease must publish when this is the node's backend.
	Setup(ctx context.Context) (Published, error)
	// Sync programs self's device addresses and everything but routes for
	// peers (all of the backend's type), reading the kernel first, and
	// returns the routes they need and each peer's state (states[i] is
	// peers[i]'s).
	Sync(ctx context.Context, self subnet.Lease, peers []*subnet.Lease) (routes []Route, states []PeerState, err error)
	// Update programs what changed for each peer in changes and returns
	// the routes to install and to delete, and the state of each changed
	// peer's new lease (states[i] is changes[i].New's; unset where New is
	// nil). Its cost is in proportion to len(changes).
	Update(ctx context.Context, self subnet.Lease, changes []Change) (delta RouteDelta, states []PeerState, err error)
	// Devices names the network devices the backend owns.
	Devices() []string
	// MTU is the MTU pods must use with this backend.
	MTU() int
	// Teardown removes the backend's devices and entries. Routes through
	// its devices go with them; others are the route owner's to remove.
	Teardown(ctx context.Context) error
}

// Change is one peer's lease before and after a change: Old is nil for a
// peer that is new to the backend, New is nil for one that left it.
type Change struct {
	Old, New *subnet.Lease
}

// RouteDelta is what an Update changes in the routing table: routes to
// install (or replace) and routes to delete.
type RouteDelta struct {
	Add, Del []Route
}

// PeerState is what a backend made of one peer.
type PeerState uint8

const (
	// Unreachable peers cannot be served by the backend (host-gw: not on
	// the same L2 segment; vxlan: no VTEP MAC).
	Unreachable PeerState = iota
	// Encapsulated peers are reachable through the backend's tunnel (or,
	// for host-gw, a plain route).
	Encapsulated
	// Direct peers are reachable with a plain route although the backend
	// tunnels (DirectRouting).
	Direct
	// OtherType peers announce a backend this node cannot run; no backend
	// programs them.
	OtherType
	// NumPeerStates is the number of states, for counting them.
	NumPeerStates
)

// Published is the backend's part of the node's lease.
type Published struct {
	Data, V6Data json.RawMessage
}

// Stats counts the peers by what the backends made of them.
type Stats struct {
	// Programmed peers are reachable (Encapsulated or Direct).
	Programmed int
	// OtherType peers announced another backend type and were left alone.
	OtherType int
	// Unreachable peers cannot be served by their backend.
	Unreachable int
	// Direct counts the programmed peers a tunnel backend reaches with a
	// plain route (DirectRouting); the rest of Programmed is encapsulated.
	Direct int
}

// StatsOf turns counts of peer states into Stats.
func StatsOf(counts [NumPeerStates]int) Stats {
	return Stats{
		Programmed:  counts[Encapsulated] + counts[Direct],
		Direct:      counts[Direct],
		Unreachable: counts[Unreachable],
		OtherType:   counts[OtherType],
	}
}

// ExternalInterface is the node's interface toward the other nodes.
type ExternalInterface struct {
	Name  string
	Index int
	MTU   int
	// Addrs are the interface's addresses with their prefixes; a peer whose
	// public address falls in one of them is on the same L2 segment.
	Addrs []netip.Prefix
	// LocalIP and LocalIPv6 are the interface addresses tunnels are sent
	// from; PublicIP and PublicIPv6 are what peers are told (different only
	// with --public-ip behind NAT).
	LocalIP, LocalIPv6   netip.Addr
	PublicIP, PublicIPv6 netip.Addr
}

// OnLink reports whether ip is directly reachable through the interface.
func (e *ExternalInterface) OnLink(ip netip.Addr) bool {
	for _, p := range e.Addrs {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Env is what every backend constructor is given.
type Env struct {
	// Netlink is the handle for the node's network namespace, NetNS that
	// namespace for the dumps netlink has no streaming call for (0 or
	// netns.None(): the current one).
	Netlink netlinksafe.Handle
	NetNS   netns.NsHandle
	Ext     *ExternalInterface
	Network *subnet.Config
	Log     *logrus.Entry
}
