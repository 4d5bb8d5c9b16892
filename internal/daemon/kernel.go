package daemon

import (
	"context"
	"os"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

// checkForwarding turns on IP forwarding for the families the network
// uses; without it no pod traffic crosses the node.
func checkForwarding(log *logrus.Entry, cfg *subnet.Config) {
	for _, f := range []struct {
		on   bool
		path string
	}{
		{cfg.IPv4.Enabled(), "/proc/sys/net/ipv4/ip_forward"},
		{cfg.IPv6.Enabled(), "/proc/sys/net/ipv6/conf/all/forwarding"},
	} {
		if !f.on {
			continue
		}
		cur, err := os.ReadFile(f.path)
		if err == nil && strings.TrimSpace(string(cur)) == "1" {
			continue
		}
		if err := os.WriteFile(f.path, []byte("1"), 0o644); err != nil {
			log.WithError(err).Warnf("IP forwarding is off and cannot be turned on (%s); pods on other nodes will be unreachable", f.path)
			continue
		}
		log.Infof("turned on IP forwarding (%s)", f.path)
	}
}

// watchKernel asks the sync loop for a sync (on kick) whenever a route weft
// owns, a permanent neighbour or FDB entry, or a link is deleted, so that
// drift is repaired at once rather than at the next periodic resync, and
// whenever another route changes, so that DirectRouting follows the
// underlay.
func (d *daemon) watchKernel(ctx context.Context, kick chan<- struct{}) error {
	extIndex := d.ext.Index // the sync loop owns d.ext; the index never changes
	done := make(chan struct{})
	defer close(done)
	routes := make(chan netlink.RouteUpdate, 256)
	neighs := make(chan netlink.NeighUpdate, 256)
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	onErr := func(err error) { d.log.WithError(err).Debug("netlink subscription") }
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		d.log.WithError(err).Warn("cannot watch routes; relying on the periodic resync")
	}
	if err := netlink.NeighSubscribeWithOptions(neighs, done, netlink.NeighSubscribeOptions{ErrorCallback: onErr}); err != nil {
		d.log.WithError(err).Warn("cannot watch neighbours; relying on the periodic resync")
	}
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		d.log.WithError(err).Warn("cannot watch links; relying on the periodic resync")
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: onErr}); err != nil {
		d.log.WithError(err).Warn("cannot watch addresses; relying on the periodic resync")
	}
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case u, ok := <-routes:
			if !ok {
				routes = nil
				continue
			}
			// A route of weft's deleted: drift. Any other route change: the
			// underlay changed, and DirectRouting decisions may with it.
			if u.Protocol != backend.RouteProtocol || u.Type == unix.RTM_DELROUTE {
				poke()
			}
		case u, ok := <-neighs:
			if !ok {
				neighs = nil
				continue
			}
			if u.Type == unix.RTM_DELNEIGH && u.State&netlink.NUD_PERMANENT != 0 {
				poke()
			}
		case u, ok := <-links:
			if !ok {
				links = nil
				continue
			}
			// A device deleted (drift), or the external interface changing
			// state or MTU.
			if u.Header.Type == unix.RTM_DELLINK || int(u.Index) == extIndex {
				poke()
			}
		case u, ok := <-addrs:
			if !ok {
				addrs = nil
				continue
			}
			if u.LinkIndex == extIndex {
				poke()
			}
		}
	}
}
