package backend

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"syscall"

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

// RouteMetric is the metric of weft's route to dst: 1024 to 5119, fixed
// by dst. The kernel hashes IPv4 routes by device, protocol, scope and
// metric but not by gateway, so 10,000 routes through one device, each via
// its own gateway (flannel's vxlan scheme, host-gw), all share one hash
// chain and each insert walks it: 1.6 s for 10,000 here. Spreading the
// metric keeps the chains short (0.16 s). Metrics only rank routes to the
// same destination, so the choice changes no forwarding.
func RouteMetric(dst netip.Prefix) int {
	h := fnv.New32a()
	b := dst.Addr().As16()
	h.Write(b[:])
	h.Write([]byte{byte(dst.Bits())})
	return 1024 + int(h.Sum32()%4096)
}

func (r Route) netlink() *netlink.Route {
	nr := &netlink.Route{
		Dst:       PrefixToIPNet(r.Dst),
		Gw:        net.IP(r.Gw.AsSlice()),
		LinkIndex: r.LinkIndex,
		Protocol:  RouteProtocol,
		Priority:  RouteMetric(r.Dst),
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
// weft cannot have made (no destination or gateway). stale is true for a
// route of weft's protocol whose metric is not RouteMetric's (made by an
// earlier weft): it must be deleted, as a new route would not replace it.
func fromNetlink(nr *netlink.Route) (r Route, ok, stale bool) {
	if nr.Dst == nil || nr.Gw == nil {
		return Route{}, false, false
	}
	dst, ok := IPNetToPrefix(nr.Dst)
	gw, ok2 := netip.AddrFromSlice(nr.Gw)
	if !ok || !ok2 {
		return Route{}, false, false
	}
	r = Route{Dst: dst, Gw: gw.Unmap(), LinkIndex: nr.LinkIndex, OnLink: nr.Flags&int(netlink.FLAG_ONLINK) != 0}
	return r, true, nr.Priority != RouteMetric(dst)
}

// DiffRoutes returns the routes to install (new or changed) and the
// routes to delete so that have becomes want. Routes are identified by
// destination; it is pure.
func DiffRoutes(want []Route, have map[netip.Prefix]Route) (add, del []Route) {
	wanted := make(map[netip.Prefix]bool, len(want))
	for _, r := range want {
		wanted[r.Dst] = true
		if cur, ok := have[r.Dst]; !ok || cur != r {
			add = append(add, r)
		}
	}
	for dst, r := range have {
		if !wanted[dst] {
			del = append(del, r)
		}
	}
	return add, del
}

// OwnedRoutes lists the routes in the main table that carry RouteProtocol,
// in both address families, and deletes those with a stale metric.
func OwnedRoutes(h netlinksafe.Handle) ([]Route, error) {
	filter := &netlink.Route{Protocol: RouteProtocol, Table: 254}
	nrs, err := h.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes with protocol %d: %w", RouteProtocol, err)
	}
	routes := make([]Route, 0, len(nrs))
	for i := range nrs {
		r, ok, stale := fromNetlink(&nrs[i])
		if stale {
			h.RouteDel(&nrs[i]) // best effort; the next verify tries again
			continue
		}
		if ok {
			routes = append(routes, r)
		}
	}
	return routes, nil
}

// SyncRoutes makes the routes weft owns equal want, reading the kernel
// first: new and changed routes are installed, then the rest deleted. On
// error it still applies what it can and returns the first error.
func SyncRoutes(h netlinksafe.Handle, want []Route) (changed int, err error) {
	return NewRouteTable(h).Sync(want, true)
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

// RouteTable installs weft's routes, remembering what it installed so that
// a sync after a lease event costs a diff in memory and the changed routes
// only; Sync with verify reads the kernel again (periodic resync, kernel
// events), which also repairs drift. Not safe for concurrent use.
type RouteTable struct {
	h     netlinksafe.Handle
	have  map[netip.Prefix]Route // what the kernel holds, as far as weft knows
	known bool
}

// NewRouteTable returns a table for the namespace of h.
func NewRouteTable(h netlinksafe.Handle) *RouteTable { return &RouteTable{h: h} }

// Sync makes weft's routes equal want, adding before deleting.
func (t *RouteTable) Sync(want []Route, verify bool) (changed int, err error) {
	if verify || !t.known {
		have, err := OwnedRoutes(t.h)
		if err != nil {
			t.known = false
			return 0, err
		}
		t.have = make(map[netip.Prefix]Route, len(have))
		for _, r := range have {
			t.have[r.Dst] = r
		}
		t.known = true
	}
	add, del := DiffRoutes(want, t.have)
	var first error
	for _, r := range add {
		if e := t.h.RouteReplace(r.netlink()); e != nil {
			first = firstErr(first, fmt.Errorf("adding route %s: %w", r, e))
			delete(t.have, r.Dst)
			t.known = false
			continue
		}
		t.have[r.Dst] = r
		changed++
	}
	for _, r := range del {
		if e := t.h.RouteDel(r.netlink()); e != nil && !errors.Is(e, syscall.ESRCH) {
			first = firstErr(first, fmt.Errorf("deleting route %s: %w", r, e))
			t.known = false
			continue
		}
		delete(t.have, r.Dst)
		changed++
	}
	return changed, first
}
