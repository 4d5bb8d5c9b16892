package cni

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/kernel"
	"github.com/weft-net/weft/subnet"
)

// ensureBridge creates the bridge (or adopts an existing one), gives it
// each family's gateway address and the MTU, and brings it up. An existing
// bridge holding another address of the pod network belongs to an older
// subnet of this node; that is reported, not silently changed under the
// pods still using it. A device of that name that is not a bridge is
// refused, never replaced.
func ensureBridge(conf *NetConf, env *subnet.Env, mtu int) (*netlink.Bridge, error) {
	h, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE) // a stock kernel may lack the others (xfrm)
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	defer h.Close()
	link, err := kernel.EnsureLink(h, kernel.LinkSpec{
		Link: &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: conf.Bridge, MTU: mtu, TxQLen: -1}},
		Adopt: func(have netlink.Link) string {
			if _, ok := have.(*netlink.Bridge); !ok {
				return fmt.Sprintf("is a %s device, not a bridge", have.Type())
			}
			return ""
		},
	}, nil)
	if err != nil {
		return nil, err
	}
	br := link.(*netlink.Bridge)
	for _, f := range families(env) {
		if err := ensureGateway(br, f); err != nil {
			return nil, err
		}
	}
	return br, nil
}

func ensureGateway(br *netlink.Bridge, f family) error {
	nlFamily := netlink.FAMILY_V4
	if f.gateway.Addr().Is6() {
		nlFamily = netlink.FAMILY_V6
	}
	addrs, err := netlinksafe.AddrList(br, nlFamily)
	if err != nil {
		return fmt.Errorf("listing addresses of %s: %w", br.Name, err)
	}
	for _, a := range addrs {
		p, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		have := netip.PrefixFrom(p.Unmap(), ones)
		if have == f.gateway {
			return nil
		}
		if f.network.IsValid() && f.network.Contains(have.Addr()) {
			return fmt.Errorf("%s has address %s but this node's subnet is now %s (the node got a new lease); "+
				"delete the bridge once its old pods are gone: ip link del %s", br.Name, have, f.gateway, br.Name)
		}
	}
	addr := &netlink.Addr{IPNet: ipNet(f.gateway)}
	if f.gateway.Addr().Is6() {
		addr.Flags = 0x80 // IFA_F_NODAD: the gateway must work at once
	}
	if err := netlink.AddrAdd(br, addr); err != nil && !errors.Is(err, errExist) {
		return fmt.Errorf("adding %s to %s: %w", f.gateway, br.Name, err)
	}
	return nil
}
