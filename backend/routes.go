package backend

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
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

// routeDiff compares the routes the kernel holds, seen one at a time as a
// dump streams in, with the routes weft wants; it holds no copy of the
// kernel's table. Routes are identified by destination. It is pure.
type routeDiff struct {
	want []Route
	idx  map[netip.Prefix]int // want's index by destination
	held []bool               // want[i] is in the kernel as it is
	del  []Route              // routes in the kernel weft no longer wants
}

func newRouteDiff(want []Route) *routeDiff {
	d := &routeDiff{want: want, idx: make(map[netip.Prefix]int, len(want)), held: make([]bool, len(want))}
	for i, r := range want {
		d.idx[r.Dst] = i
	}
	return d
}

// see records a route of weft's the kernel holds.
func (d *routeDiff) see(r Route) {
	i, ok := d.idx[r.Dst]
	switch {
	case !ok:
		d.del = append(d.del, r)
	case d.want[i] == r:
		d.held[i] = true
	} // else: wanted with another next hop; replaced by the add
}

// restart forgets what was seen, for a dump read again.
func (d *routeDiff) restart() {
	clear(d.held)
	d.del = d.del[:0]
}

// result returns the routes to install (new or changed) and to delete.
func (d *routeDiff) result() RouteDelta {
	var add []Route
	for i, r := range d.want {
		if !d.held[i] {
			add = append(add, r)
		}
	}
	return RouteDelta{Add: add, Del: d.del}
}

// eachOwnedRoute calls f with each route in the main table that carries
// RouteProtocol, in both address families, streaming the kernel's dump,
// and deletes those with a stale metric. A dump the kernel interrupted is
// read again after calling restart.
func eachOwnedRoute(h netlinksafe.Handle, restart func(), f func(Route)) error {
	filter := &netlink.Route{Protocol: RouteProtocol, Table: 254}
	var err error
	for attempt := range 5 {
		if attempt > 0 {
			restart()
		}
		var stale []netlink.Route
		err = h.RouteListFilteredIter(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE, func(nr netlink.Route) bool {
			r, ok, isStale := fromNetlink(&nr)
			switch {
			case isStale:
				stale = append(stale, nr)
			case ok:
				f(r)
			}
			return true
		})
		for i := range stale {
			h.RouteDel(&stale[i]) // best effort; the next reading tries again
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("listing routes with protocol %d: %w", RouteProtocol, err)
	}
	return nil
}

// SyncRoutes makes the routes weft owns equal want, reading the kernel
// first: new and changed routes are installed, then the rest deleted. On
// error it still applies what it can and returns the first error.
func SyncRoutes(h netlinksafe.Handle, want []Route) (changed int, err error) {
	d := newRouteDiff(want)
	if err := eachOwnedRoute(h, d.restart, d.see); err != nil {
		return 0, err
	}
	delta := d.result()
	return len(delta.Add) + len(delta.Del), ApplyRoutes(h, delta)
}

// ApplyRoutes installs d.Add, then deletes d.Del, except routes to a
// destination d.Add has just replaced (a peer moving from one backend to
// another). On error it still applies what it can and returns the first
// error.
func ApplyRoutes(h netlinksafe.Handle, d RouteDelta) error {
	var first error
	for _, r := range d.Add {
		if e := h.RouteReplace(r.netlink()); e != nil {
			first = firstErr(first, fmt.Errorf("adding route %s: %w", r, e))
		}
	}
	replaced := func(dst netip.Prefix) bool {
		return slices.ContainsFunc(d.Add, func(r Route) bool { return r.Dst == dst })
	}
	if len(d.Add) > 64 && len(d.Del) > 0 { // deltas are small but for mass backend switches
		added := make(map[netip.Prefix]bool, len(d.Add))
		for _, r := range d.Add {
			added[r.Dst] = true
		}
		replaced = func(dst netip.Prefix) bool { return added[dst] }
	}
	for _, r := range d.Del {
		if replaced(r.Dst) {
			continue
		}
		if e := h.RouteDel(r.netlink()); e != nil && !errors.Is(e, syscall.ESRCH) {
			first = firstErr(first, fmt.Errorf("deleting route %s: %w", r, e))
		}
	}
	return first
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
