package daemon

import (
	"context"
	"net"
	"slices"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/internal/status"
)

// refreshInterface re-reads the external interface. A changed MTU or set of
// addresses is taken over in place (backends share the ExternalInterface);
// a changed address that tunnels are sent from, or that peers are told,
// re-creates the backends and updates the lease. Going down and up needs
// nothing here: the kernel drops the routes through a link that goes down,
// the route events trigger syncs, and the sync after it comes up restores
// them.
func (d *daemon) refreshInterface(ctx context.Context) {
	link, err := d.nl.LinkByIndex(d.ext.Index)
	if err != nil {
		d.log.WithError(err).WithField("interface", d.ext.Name).Warn("the external interface is gone; keeping the kernel state as it is")
		return
	}
	addrs, err := globalAddrs(d.nl, link)
	if err != nil {
		return
	}
	fresh := describeInterface(link, addrs, d.cfg)
	cur := d.ext
	if link.Attrs().Flags&net.FlagUp != 0 && len(addrs) == 0 {
		return // addresses are being replaced; wait for the new one
	}
	if fresh.MTU == cur.MTU && slices.Equal(fresh.Addrs, cur.Addrs) {
		return
	}
	moved := fresh.LocalIP != cur.LocalIP || fresh.LocalIPv6 != cur.LocalIPv6 ||
		fresh.PublicIP != cur.PublicIP || fresh.PublicIPv6 != cur.PublicIPv6
	d.log.WithFields(logrus.Fields{"interface": fresh.Name, "addresses": fresh.Addrs, "mtu": fresh.MTU, "was": cur.Addrs}).
		Warn("the external interface changed")
	*d.ext = *fresh
	if !moved {
		return
	}
	if (d.netCfg.IPv4.Enabled() && !fresh.PublicIP.IsValid()) || (d.netCfg.IPv6.Enabled() && !fresh.PublicIPv6.IsValid()) {
		d.log.Warn("the external interface lost the address peers reach this node at; waiting for a new one")
		return
	}
	primary, err := d.backends.rebuild(ctx)
	if err != nil {
		d.log.WithError(err).Error("re-creating the backends for the new address")
		return
	}
	attrs := d.claim.Lease().Attrs
	attrs.PublicIP, attrs.PublicIPv6 = fresh.PublicIP, fresh.PublicIPv6
	if !d.netCfg.IPv4.Enabled() {
		attrs.PublicIP = cur.PublicIP
	}
	if !d.netCfg.IPv6.Enabled() {
		attrs.PublicIPv6 = cur.PublicIPv6
	}
	attrs.BackendData, attrs.BackendV6Data = primary.published.Data, primary.published.V6Data
	d.pending = &attrs
	d.publish(ctx)
	d.state.update(func(s *status.Status) {
		s.PublicIP, s.PublicIPv6 = addrString(attrs.PublicIP), addrString(attrs.PublicIPv6)
	})
	if err := d.writeSubnetEnv(); err != nil {
		d.log.WithError(err).Error("rewriting subnet.env")
	}
}
