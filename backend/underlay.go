package backend

import (
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/kernel"
)

// Underlay is the node's main routing table, less weft's own routes, as
// one full sync sees it. DirectRouting asks it, per peer, whether a plain
// route can reach the peer's subnet: when the kernel's route to the peer's
// public address has no gateway (the peer is on this node's L2 segment).
// It reads the table on first use, so a sync whose backends do not route
// directly reads nothing. Not safe for concurrent use.
type Underlay struct {
	h      netlinksafe.Handle
	loaded bool
	routes []underlayRoute
}

// underlayRoute is what Underlay needs of a route.
type underlayRoute struct {
	dst     netip.Prefix
	link    int
	gateway bool // via a gateway, or multipath
}

// NewUnderlay returns the underlay of h's namespace, not read yet.
func NewUnderlay(h netlinksafe.Handle) *Underlay { return &Underlay{h: h} }

func (u *Underlay) load() {
	u.loaded = true
	u.h.RouteListFilteredIter(netlink.FAMILY_ALL, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE, func(r netlink.Route) bool {
		if r.Protocol == kernel.RouteProtocol {
			return true // a route weft made is not the underlay
		}
		ur := underlayRoute{link: r.LinkIndex, gateway: r.Gw != nil || len(r.MultiPath) > 0}
		if r.Dst == nil {
			if r.Family == netlink.FAMILY_V6 {
				ur.dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			} else {
				ur.dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			}
		} else if p, ok := kernel.IPNetToPrefix(r.Dst); ok {
			ur.dst = p
		} else {
			return true
		}
		u.routes = append(u.routes, ur)
		return true
	})
}

// Direct returns the plain route to dst via the peer's public address if
// the peer is directly reachable.
func (u *Underlay) Direct(dst netip.Prefix, public netip.Addr) (kernel.Route, bool) {
	if !u.loaded {
		u.load()
	}
	var best *underlayRoute
	for i := range u.routes {
		r := &u.routes[i]
		if r.dst.Addr().Is4() != public.Is4() || !r.dst.Contains(public) || best != nil && r.dst.Bits() <= best.dst.Bits() {
			continue
		}
		best = r
	}
	if best == nil || best.gateway {
		return kernel.Route{}, false
	}
	return kernel.Route{Dst: dst, Gw: public, LinkIndex: best.link}, true
}
