// Package backend defines how weft reaches a peer's pod subnet: a backend
// (vxlan, host-gw, ipip, in subpackages) sets up its devices and says, for
// one peer at a time, what the kernel must hold. It programs nothing per
// peer itself: internal/reconcile collects what every peer needs and
// internal/kernel applies the difference (docs/architecture.md).
package backend

import (
	"context"
	"encoding/json"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/internal/kernel"
	"github.com/weft-net/weft/subnet"
)

// Backend makes this node reach the peers that announce its type.
//
// A node may run several backends at once: each peer is served by the
// backend its lease names, so a cluster switching backends stays connected
// (see internal/reconcile). Backends are not safe for concurrent use: the
// reconciler's goroutine calls them.
type Backend interface {
	// Type is the backend's name as it appears in leases ("vxlan").
	Type() string
	// Setup creates or adopts the backend's devices for the external
	// interface ext, gives them self's addresses, and returns what the
	// node's lease must publish when this is the node's backend. It is
	// idempotent: the reconciler calls it before every full sync, so that a
	// deleted device comes back, and with every new snapshot of ext.
	Setup(ctx context.Context, ext *ExternalInterface, self *subnet.Lease) (Published, error)
	// Peer appends to e what the kernel must hold for this node to reach
	// p, and returns p's state and, when p is unreachable, why. It changes
	// nothing: the entries depend only on p, on what the last Setup made
	// and on u (the underlay's routes, for DirectRouting), so the entries
	// of a lease before a change can be worked out again after it.
	Peer(p *subnet.Lease, u *Underlay, e *kernel.Entries) (PeerState, string)
	// Links returns the indexes of the devices whose permanent neighbour
	// and FDB entries belong to the backend, as of the last Setup.
	Links() []int
	// Devices names the network devices the backend owns.
	Devices() []string
	// MTU is the MTU pods must use with this backend, as of the last Setup.
	MTU() int
	// Teardown removes the backend's devices; the kernel drops the routes
	// and entries through them.
	Teardown(ctx context.Context) error
}

// Env is what every backend constructor is given.
type Env struct {
	// Netlink is the handle for the node's network namespace.
	Netlink netlinksafe.Handle
	// Network is the network configuration; its Backend holds this
	// backend's options.
	Network *subnet.Config
	Log     *logrus.Entry
}

// Constructor makes a backend; it touches nothing until Setup.
type Constructor func(Env) (Backend, error)

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

// ExternalInterface is the node's interface toward the other nodes, as
// one snapshot saw it. It is immutable: a change of the interface is a new
// snapshot (internal/netmon), never an update of this one.
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

// Local returns the address tunnels of one family are sent from.
func (e *ExternalInterface) Local(ipv6 bool) netip.Addr {
	if ipv6 {
		return e.LocalIPv6
	}
	return e.LocalIP
}

// Public returns the address of one family peers reach this node at.
func (e *ExternalInterface) Public(ipv6 bool) netip.Addr {
	if ipv6 {
		return e.PublicIPv6
	}
	return e.PublicIP
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
