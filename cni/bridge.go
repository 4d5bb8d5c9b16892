package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/subnet"
)

// ensureBridge creates the bridge (or adopts an existing one), gives it
// each family's gateway address and the MTU, and brings it up. An existing
// bridge holding another address of the pod network belongs to an older
// subnet of this node; that is reported, not silently changed under the
// pods still using it.
func ensureBridge(conf *NetConf, env *subnet.Env, mtu int) (*netlink.Bridge, error) {
	link, err := netlinksafe.LinkByName(conf.Bridge)
	if err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, fmt.Errorf("looking up bridge %s: %w", conf.Bridge, err)
	}
	if link == nil {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: conf.Bridge, MTU: mtu, TxQLen: -1}}
		if err := netlink.LinkAdd(br); err != nil && !errors.Is(err, errExist) {
			return nil, fmt.Errorf("creating bridge %s: %w", conf.Bridge, err)
		}
		if link, err = netlinksafe.LinkByName(conf.Bridge); err != nil {
			return nil, fmt.Errorf("looking up bridge %s: %w", conf.Bridge, err)
		}
	}
	br, ok := link.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("%s exists but is a %s device, not a bridge", conf.Bridge, link.Type())
	}
	for _, f := range families(env) {
		if err := ensureGateway(br, f); err != nil {
			return nil, err
		}
	}
	if br.MTU != mtu {
		if err := netlink.LinkSetMTU(br, mtu); err != nil {
			return nil, fmt.Errorf("setting MTU %d on %s: %w", mtu, conf.Bridge, err)
		}
	}
	if br.Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(br); err != nil {
			return nil, fmt.Errorf("bringing up %s: %w", conf.Bridge, err)
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
