package backend

import (
	"fmt"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
)

// EnsureAddr makes addr the only address of its family on link.
func EnsureAddr(h netlinksafe.Handle, link netlink.Link, addr netip.Prefix) error {
	family := netlink.FAMILY_V4
	if addr.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := h.AddrList(link, family)
	if err != nil {
		return fmt.Errorf("listing addresses of %s: %w", link.Attrs().Name, err)
	}
	found := false
	for _, a := range addrs {
		p, ok := IPNetToPrefix(a.IPNet)
		if ok && p == addr {
			found = true
			continue
		}
		if ok && p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if err := h.AddrDel(link, &a); err != nil {
			return fmt.Errorf("deleting address %s from %s: %w", p, link.Attrs().Name, err)
		}
	}
	if !found {
		if err := h.AddrReplace(link, &netlink.Addr{IPNet: PrefixToIPNet(addr)}); err != nil {
			return fmt.Errorf("adding address %s to %s: %w", addr, link.Attrs().Name, err)
		}
	}
	return nil
}
