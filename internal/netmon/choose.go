// Package netmon is weftd's view of the node's network: it chooses the
// external interface as flanneld does and watches the kernel, sending a
// new immutable snapshot of the interface whenever it changes and a signal
// when weft's own kernel state may have drifted.
package netmon

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/kernel"
)

// Selection says which interface to use and which addresses to announce:
// weftd's --iface, --iface-regex, --iface-can-reach, --public-ip and
// --public-ipv6.
type Selection struct {
	Ifaces     []string
	IfaceRegex []string
	CanReach   netip.Addr
	PublicIP   netip.Addr
	PublicIPv6 netip.Addr
}

// Choose picks the external interface as flanneld does: the first of
// --iface (name or address) that exists, else the first interface whose
// name or address matches --iface-regex, else the interface of the route to
// --iface-can-reach, else that of the default route (IPv6's on an
// IPv6-only network). It returns a snapshot of the interface and a
// sentence saying why it was chosen. The regular expressions must have
// been checked (weftd's Config.Validate does).
func Choose(h netlinksafe.Handle, cfg *Selection, ipv6Only bool) (*backend.ExternalInterface, string, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, "", fmt.Errorf("listing interfaces: %w", err)
	}
	addrsOf := func(l netlink.Link) []netip.Prefix {
		ps, _ := globalAddrs(h, l)
		return ps
	}

	var chosen netlink.Link
	var why string
	switch {
	case len(cfg.Ifaces) > 0:
	search:
		for _, want := range cfg.Ifaces {
			ip, perr := netip.ParseAddr(want)
			isIP := perr == nil
			for _, l := range links {
				if !isIP && l.Attrs().Name == want {
					chosen, why = l, fmt.Sprintf("--iface %s", want)
					break search
				}
				for _, p := range addrsOf(l) {
					if isIP && p.Addr() == ip {
						chosen, why = l, fmt.Sprintf("--iface %s is its address", want)
						break search
					}
				}
			}
		}
		if chosen == nil {
			return nil, "", fmt.Errorf("none of --iface %v is an interface name or address on this node", cfg.Ifaces)
		}
	case len(cfg.IfaceRegex) > 0:
	searchRe:
		for _, expr := range cfg.IfaceRegex {
			re := regexp.MustCompile(expr) // validated by Config.Validate
			for _, l := range links {
				if re.MatchString(l.Attrs().Name) {
					chosen, why = l, fmt.Sprintf("its name matches --iface-regex %q", expr)
					break searchRe
				}
				for _, p := range addrsOf(l) {
					if re.MatchString(p.Addr().String()) {
						chosen, why = l, fmt.Sprintf("its address %s matches --iface-regex %q", p.Addr(), expr)
						break searchRe
					}
				}
			}
		}
		if chosen == nil {
			return nil, "", fmt.Errorf("no interface name or address matches --iface-regex %v", cfg.IfaceRegex)
		}
	case cfg.CanReach.IsValid():
		routes, err := h.RouteGet(cfg.CanReach.AsSlice())
		if err != nil || len(routes) == 0 {
			return nil, "", fmt.Errorf("no route to --iface-can-reach %s: %w", cfg.CanReach, err)
		}
		if chosen, err = h.LinkByIndex(routes[0].LinkIndex); err != nil {
			return nil, "", fmt.Errorf("interface #%d of the route to %s: %w", routes[0].LinkIndex, cfg.CanReach, err)
		}
		why = fmt.Sprintf("it has the route to --iface-can-reach %s", cfg.CanReach)
	default:
		family := netlink.FAMILY_V4
		if ipv6Only {
			family = netlink.FAMILY_V6
		}
		routes, err := h.RouteListFiltered(family, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, "", fmt.Errorf("listing routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask) {
				if chosen, err = h.LinkByIndex(r.LinkIndex); err == nil {
					why = "it has the default route"
					break
				}
			}
		}
		if chosen == nil {
			return nil, "", errors.New("no default route to pick the external interface from; give --iface, --iface-regex or --iface-can-reach")
		}
	}

	return describe(chosen, addrsOf(chosen), cfg), why, nil
}

// describe makes a snapshot of link with its global addresses;
// --public-ip and --public-ipv6 override what peers are told.
func describe(link netlink.Link, addrs []netip.Prefix, cfg *Selection) *backend.ExternalInterface {
	attrs := link.Attrs()
	ext := &backend.ExternalInterface{Name: attrs.Name, Index: attrs.Index, MTU: attrs.MTU, Addrs: addrs}
	for _, p := range ext.Addrs {
		if p.Addr().Is4() && !ext.LocalIP.IsValid() {
			ext.LocalIP = p.Addr()
		}
		if p.Addr().Is6() && !ext.LocalIPv6.IsValid() {
			ext.LocalIPv6 = p.Addr()
		}
	}
	ext.PublicIP, ext.PublicIPv6 = ext.LocalIP, ext.LocalIPv6
	if cfg.PublicIP.IsValid() {
		ext.PublicIP = cfg.PublicIP
	}
	if cfg.PublicIPv6.IsValid() {
		ext.PublicIPv6 = cfg.PublicIPv6
	}
	return ext
}

// globalAddrs returns link's global unicast addresses.
func globalAddrs(h netlinksafe.Handle, link netlink.Link) ([]netip.Prefix, error) {
	as, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var ps []netip.Prefix
	for _, a := range as {
		if p, ok := kernel.IPNetToPrefix(a.IPNet); ok && p.Addr().IsGlobalUnicast() {
			ps = append(ps, p)
		}
	}
	return ps, nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}
