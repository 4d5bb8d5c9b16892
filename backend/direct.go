package backend

import (
	"net/netip"

	"github.com/vishvananda/netlink"
)

// DirectRouter decides, per peer, whether a tunnel backend with
// DirectRouting can send to the peer's subnet with a plain route: when the
// kernel's route to the peer's public address has no gateway (the peer is
// on this node's L2 segment). It reads the routing table when made (a
// backend makes one per full sync, and a change of the underlay's routes
// causes one), keeping only the underlay's routes.
type DirectRouter struct {
	enabled bool
	routes  []underlayRoute
}

// underlayRoute is what DirectRouter needs of a route.
type underlayRoute struct {
	dst     netip.Prefix
	link    int
	gateway bool // via a gateway, or multipath
}

// NewDirectRouter snapshots the main routing table if enabled.
func NewDirectRouter(env Env, enabled bool) *DirectRouter {
	d := &DirectRouter{enabled: enabled}
	if !enabled {
		return d
	}
	env.Netlink.RouteListFilteredIter(netlink.FAMILY_ALL, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE, func(r netlink.Route) bool {
		if r.Protocol == RouteProtocol {
			return true // a route weft made is not the underlay
		}
		u := underlayRoute{link: r.LinkIndex, gateway: r.Gw != nil || len(r.MultiPath) > 0}
		if r.Dst == nil {
			if r.Family == netlink.FAMILY_V6 {
				u.dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			} else {
				u.dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			}
		} else if p, ok := IPNetToPrefix(r.Dst); ok {
			u.dst = p
		} else {
			return true
		}
		d.routes = append(d.routes, u)
		return true
	})
	return d
}

// Route returns the plain route to dst via the peer's public address if
// the peer is directly reachable.
func (d *DirectRouter) Route(dst netip.Prefix, public netip.Addr) (Route, bool) {
	if !d.enabled {
		return Route{}, false
	}
	var best *underlayRoute
	for i := range d.routes {
		r := &d.routes[i]
		if r.dst.Addr().Is4() != public.Is4() || !r.dst.Contains(public) || best != nil && r.dst.Bits() <= best.dst.Bits() {
			continue
		}
		best = r
	}
	if best == nil || best.gateway {
		return Route{}, false
	}
	return Route{Dst: dst, Gw: public, LinkIndex: best.link}, true
}
