package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
)

func (r Route) netlink() *netlink.Route {
	nr := &netlink.Route{
		Dst:       PrefixToIPNet(r.Dst),
		Gw:        net.IP(r.Gw.AsSlice()),
		LinkIndex: r.LinkIndex,
		Protocol:  RouteProtocol,
		Priority:  RouteMetric(r.Dst),
		Table:     mainTable,
	}
	if r.OnLink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
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

// eachOwnedRoute calls f with each route in the main table that carries
// RouteProtocol, in both address families, streaming the kernel's dump,
// and deletes those with a stale metric. A dump the kernel interrupted is
// read again after calling restart.
func eachOwnedRoute(h netlinksafe.Handle, restart func(), f func(Route)) error {
	filter := &netlink.Route{Protocol: RouteProtocol, Table: mainTable}
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

func (k *Kernel) addRoute(r Route) error {
	if err := k.h.RouteReplace(r.netlink()); err != nil {
		return fmt.Errorf("adding route %s: %w", r, err)
	}
	return nil
}

func (k *Kernel) delRoute(r Route) error {
	if err := k.h.RouteDel(r.netlink()); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("deleting route %s: %w", r, err)
	}
	return nil
}
