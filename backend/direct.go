package backend

import (
	"net/netip"

	"github.com/vishvananda/netlink"
)

// DirectRouter decides, per peer, whether a tunnel backend with
// DirectRouting can send to the peer's subnet with a plain route: when the
// kernel's route to the peer's public address has no gateway (the peer is
// on this node's L2 segment). It reads the routing table once per sync, so
// a change of the underlay's routes is picked up by the next sync.
type DirectRouter struct {
	enabled bool
	routes  []netlink.Route
	ext     *ExternalInterface
}

// NewDirectRouter snapshots the main routing table if enabled.
func NewDirectRouter(env Env, enabled bool) *DirectRouter {
	d := &DirectRouter{enabled: enabled, ext: env.Ext}
	if enabled {
		d.routes, _ = env.Netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE)
	}
	return d
}

// Route returns the plain route to dst via the peer's public address if
// the peer is directly reachable.
func (d *DirectRouter) Route(dst netip.Prefix, public netip.Addr) (Route, bool) {
	if !d.enabled {
		return Route{}, false
	}
	var best *netlink.Route
	bestLen := -1
	for i := range d.routes {
		r := &d.routes[i]
		if r.Protocol == RouteProtocol {
			continue // a route weft made is not the underlay
		}
		var p netip.Prefix
		if r.Dst == nil {
			p = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if public.Is6() {
				p = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
		} else if pp, ok := IPNetToPrefix(r.Dst); ok {
			p = pp
		} else {
			continue
		}
		if p.Addr().Is4() != public.Is4() || !p.Contains(public) || p.Bits() <= bestLen {
			continue
		}
		best, bestLen = r, p.Bits()
	}
	if best == nil || best.Gw != nil || len(best.MultiPath) > 0 {
		return Route{}, false
	}
	return Route{Dst: dst, Gw: public, LinkIndex: best.LinkIndex}, true
}
