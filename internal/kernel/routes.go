package kernel

import (
	"errors"
	"fmt"
	"net"
	"syscall"

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

// eachOwnedRoute calls f with each route in the main table that carries
// RouteProtocol, in both address families, streaming the kernel's dump,
// and then deletes those with a stale metric: made by an earlier weft,
// they would not be replaced by a route with RouteMetric's. A dump the
// kernel interrupted is read again after calling restart.
func (k *Kernel) eachOwnedRoute(restart func(), f func(Route)) error {
	type staleRoute struct {
		r      Route
		metric int
	}
	var stale []staleRoute
	err := dumpRoutes(k.ns, func() { stale = stale[:0]; restart() }, func(r Route, metric int) {
		if metric != RouteMetric(r.Dst) {
			stale = append(stale, staleRoute{r, metric})
			return
		}
		f(r)
	})
	if err != nil {
		return fmt.Errorf("listing routes with protocol %d: %w", RouteProtocol, err)
	}
	for _, s := range stale {
		nr := s.r.netlink()
		nr.Priority = s.metric
		k.h.RouteDel(nr) // best effort; the next reading tries again
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
