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
// (see internal/daemon). Routes therefore have one owner: Sync returns the
// routes its peers need and the caller installs the union of all backends'
// routes with SyncRoutes.
//
// Setup may be called again after Teardown. Sync may be called repeatedly
// with the same arguments; each call makes the backend's devices and
// neighbour/FDB entries match them, changing only the difference, so it
// also repairs drift. Backends are not safe for concurrent use: one
// goroutine (the daemon's sync loop) calls them.
type Backend interface {
	// Type is the backend's name as it appears in leases ("vxlan").
	Type() string
	// Setup creates or adopts the backend's devices and returns what the
	// node's lease must publish when this is the node's backend.
	Setup(ctx context.Context) (Published, error)
	// Sync programs self's device addresses and everything but routes for
	// peers, and returns the routes they need. Peers of another type are
	// counted as OtherType and left alone. Without verify a backend may
	// diff against what it last programmed instead of reading the kernel;
	// with verify it reads the kernel (and so repairs drift).
	Sync(ctx context.Context, self subnet.Lease, peers []subnet.Lease, verify bool) ([]Route, Stats, error)
	// Devices names the network devices the backend owns.
	Devices() []string
	// MTU is the MTU pods must use with this backend.
	MTU() int
	// Teardown removes the backend's devices and entries. Routes through
	// its devices go with them; others are the route owner's to remove.
	Teardown(ctx context.Context) error
}

// Published is the backend's part of the node's lease.
type Published struct {
	Data, V6Data json.RawMessage
}

// Stats counts what a Sync did with the peers it was given.
type Stats struct {
	// Programmed peers are reachable through this backend.
	Programmed int
	// OtherType peers announced another backend type and were left alone.
	OtherType int
	// Unreachable peers cannot be served by this backend (host-gw: not on
	// the same L2 segment; vxlan: no VTEP MAC).
	Unreachable int
	// Direct counts the programmed peers a tunnel backend reaches with a
	// plain route (DirectRouting); the rest of Programmed is encapsulated.
	Direct int
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
	// Netlink is the handle for the node's network namespace.
	Netlink netlinksafe.Handle
	Ext     *ExternalInterface
	Network *subnet.Config
	Log     *logrus.Entry
}
