package backend

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
)

// Route is a route weft wants: to Dst via Gw (a gateway on LinkIndex's
// segment, or with OnLink a next hop the device reaches directly).
type Route struct {
	Dst       netip.Prefix
	Gw        netip.Addr
	LinkIndex int
	OnLink    bool
}

func (r Route) netlink() *netlink.Route {
	nr := &netlink.Route{
		Dst:       PrefixToIPNet(r.Dst),
		Gw:        net.IP(r.Gw.AsSlice()),
		LinkIndex: r.LinkIndex,
		Protocol:  RouteProtocol,
		Table:     254, // main
	}
	if r.OnLink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

func (r Route) String() string {
	s := fmt.Sprintf("%s via %s dev #%d", r.Dst, r.Gw, r.LinkIndex)
	if r.OnLink {
		s += " onlink"
	}
	return s
}

// fromNetlink converts a route read from the kernel; ok is false for routes
// weft cannot have made (no destination or gateway).
func fromNetlink(nr *netlink.Route) (Route, bool) {
	if nr.Dst == nil || nr.Gw == nil {
		return Route{}, false
	}
	dst, ok := IPNetToPrefix(nr.Dst)
	gw, ok2 := netip.AddrFromSlice(nr.Gw)
	if !ok || !ok2 {
		return Route{}, false
	}
	return Route{Dst: dst, Gw: gw.Unmap(), LinkIndex: nr.LinkIndex, OnLink: nr.Flags&int(netlink.FLAG_ONLINK) != 0}, true
}

// DiffRoutes returns the routes to install (new or changed) and the
// routes to delete so that have becomes want. Routes are identified by
// destination; it is pure.
func DiffRoutes(want, have []Route) (add, del []Route) {
	current := make(map[netip.Prefix]Route, len(have))
	for _, r := range have {
		current[r.Dst] = r
	}
	wanted := make(map[netip.Prefix]bool, len(want))
	for _, r := range want {
		wanted[r.Dst] = true
		if cur, ok := current[r.Dst]; !ok || cur != r {
			add = append(add, r)
		}
	}
	for _, r := range have {
		if !wanted[r.Dst] {
			del = append(del, r)
		}
	}
	return add, del
}

// OwnedRoutes lists the routes in the main table that carry RouteProtocol,
// in both address families.
func OwnedRoutes(h netlinksafe.Handle) ([]Route, error) {
	filter := &netlink.Route{Protocol: RouteProtocol, Table: 254}
	nrs, err := h.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes with protocol %d: %w", RouteProtocol, err)
	}
	routes := make([]Route, 0, len(nrs))
	for i := range nrs {
		if r, ok := fromNetlink(&nrs[i]); ok {
			routes = append(routes, r)
		}
	}
	return routes, nil
}

// SyncRoutes makes the routes weft owns equal want: it installs new and
// changed routes first, then deletes the rest. It reports how many it
// changed; on error it still applies what it can and returns the first
// error.
func SyncRoutes(h netlinksafe.Handle, want []Route) (changed int, err error) {
	have, err := OwnedRoutes(h)
	if err != nil {
		return 0, err
	}
	add, del := DiffRoutes(want, have)
	var first error
	for _, r := range add {
		if e := h.RouteReplace(r.netlink()); e != nil {
			first = firstErr(first, fmt.Errorf("adding route %s: %w", r, e))
			continue
		}
		changed++
	}
	for _, r := range del {
		if e := h.RouteDel(r.netlink()); e != nil {
			first = firstErr(first, fmt.Errorf("deleting route %s: %w", r, e))
			continue
		}
		changed++
	}
	return changed, first
}

func firstErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// PrefixToIPNet converts for netlink calls.
func PrefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// IPNetToPrefix converts what netlink returns.
func IPNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(addr.Unmap(), ones), true
}
