package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/masq"
	"github.com/weft-net/weft/subnet"
)

// Add wires the container in args into the node's subnet and prints the
// CNI result. A repeated ADD for the same container returns the same
// addresses. On failure nothing it made is left behind.
func Add(args *skel.CmdArgs) (err error) {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "invalid network configuration", err.Error())
	}
	env, err := conf.readEnv()
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, "weft's subnet is not known yet", err.Error())
	}
	netns, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, "container network namespace", fmt.Sprintf("opening %q: %v", args.Netns, err))
	}
	defer netns.Close()
	mtu := conf.mtu(env)

	ips, err := allocate(conf, env, args.ContainerID, args.IfName)
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, "allocating an address", err.Error())
	}
	defer func() {
		if err != nil {
			release(conf, args.ContainerID, args.IfName)
		}
	}()

	br, err := ensureBridge(conf, env, mtu)
	if err != nil {
		return types.NewError(types.ErrInternal, "setting up the bridge", err.Error())
	}
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return err
	}
	defer hostNS.Close()

	var hostIf, contIf net.Interface
	if err := netns.Do(func(ns.NetNS) error {
		if _, err := netlinksafe.LinkByName(args.IfName); err == nil {
			// A repeated ADD: start from scratch inside the container.
			if err := ip.DelLinkByName(args.IfName); err != nil {
				return err
			}
		}
		var err error
		hostIf, contIf, err = ip.SetupVeth(args.IfName, mtu, "", hostNS)
		return err
	}); err != nil {
		return types.NewError(types.ErrInternal, "creating the veth pair", err.Error())
	}
	defer func() {
		if err != nil {
			ip.DelLinkByName(hostIf.Name)
		}
	}()
	hostLink, err := netlinksafe.LinkByName(hostIf.Name)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetMaster(hostLink, br); err != nil {
		return fmt.Errorf("attaching %s to %s: %w", hostIf.Name, br.Name, err)
	}
	if err := netlink.LinkSetHairpin(hostLink, conf.hairpin()); err != nil {
		return fmt.Errorf("setting hairpin mode on %s: %w", hostIf.Name, err)
	}

	result := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: br.Name, Mac: br.HardwareAddr.String()},
			{Name: hostIf.Name, Mac: hostIf.HardwareAddr.String()},
			{Name: contIf.Name, Mac: contIf.HardwareAddr.String(), Sandbox: args.Netns},
		},
		IPs: ips,
	}
	for _, f := range families(env) {
		gw := net.IP(f.gateway.Addr().AsSlice())
		if f.network.IsValid() {
			result.Routes = append(result.Routes, &types.Route{Dst: *ipNet(f.network), GW: gw})
		}
		zero := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if f.gateway.Addr().Is6() {
			zero = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		result.Routes = append(result.Routes, &types.Route{Dst: *ipNet(zero), GW: gw})
	}
	// Index 2 is the container interface in Interfaces.
	if err := netns.Do(func(ns.NetNS) error { return ipam.ConfigureIface(args.IfName, result) }); err != nil {
		return types.NewError(types.ErrInternal, "configuring the container interface", err.Error())
	}
	if conf.ipMasq(env) {
		if err := masquerade(conf, env, ips, true); err != nil {
			return types.NewError(types.ErrInternal, "masquerade", err.Error())
		}
	}
	return types.PrintResult(result, conf.CNIVersion)
}

// Del removes the container's interface and releases its addresses. It
// succeeds when there is nothing left to remove, so it is safe to repeat,
// and works when the namespace or subnet.env are gone.
func Del(args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "invalid network configuration", err.Error())
	}
	addrs, err := allocated(conf, args.ContainerID, args.IfName)
	if err != nil {
		return types.NewError(types.ErrInternal, "reading the container's addresses", err.Error())
	}
	// Without subnet.env (weftd gone) there is no masquerade setting to
	// follow; the entries go with the table.
	if env, err := conf.readEnv(); err == nil && conf.ipMasq(env) && len(addrs) > 0 {
		var ips []*current.IPConfig
		for _, a := range addrs {
			ips = append(ips, &current.IPConfig{Address: net.IPNet{IP: a}})
		}
		if err := masquerade(conf, env, ips, false); err != nil {
			return types.NewError(types.ErrInternal, "removing the container's masquerade entry", err.Error())
		}
	}
	if err := release(conf, args.ContainerID, args.IfName); err != nil {
		return err
	}
	if args.Netns == "" {
		return nil
	}
	err = ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		err := ip.DelLinkByName(args.IfName)
		if err != nil && errors.Is(err, ip.ErrLinkNotFound) {
			return nil
		}
		return err
	})
	var notExist ns.NSPathNotExistErr
	if err != nil && !errors.As(err, &notExist) {
		return types.NewError(types.ErrInternal, "deleting the container interface", err.Error())
	}
	return nil
}

// Check verifies that the container still has the interface, addresses and
// routes of its previous result, and that its veth is on the bridge.
func Check(args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "invalid network configuration", err.Error())
	}
	if conf.RawPrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs a prevResult", "")
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "invalid prevResult", err.Error())
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return err
	}
	if _, err := conf.readEnv(); err != nil {
		return types.NewError(types.ErrTryAgainLater, "weft's subnet is not known", err.Error())
	}
	if _, err := netlinksafe.LinkByName(conf.Bridge); err != nil {
		return fmt.Errorf("bridge %s: %w", conf.Bridge, err)
	}
	return ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(args.IfName)
		if err != nil {
			return fmt.Errorf("container interface %s: %w", args.IfName, err)
		}
		have, err := netlinksafe.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, want := range prev.IPs {
			found := false
			for _, a := range have {
				found = found || a.IPNet.String() == want.Address.String()
			}
			if !found {
				return fmt.Errorf("container interface %s lacks address %s", args.IfName, want.Address.String())
			}
		}
		for _, r := range prev.Routes {
			routes, err := netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Dst: &r.Dst, Table: 254}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
			if ip.IsIPNetZero(&r.Dst) {
				routes, err = netlinksafe.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE)
			}
			if err != nil {
				return err
			}
			found := false
			for _, have := range routes {
				found = found || have.Gw.Equal(r.GW) && (have.Dst == nil && ip.IsIPNetZero(&r.Dst) || have.Dst != nil && have.Dst.String() == r.Dst.String())
			}
			if !found {
				return fmt.Errorf("container lacks route %s via %s", r.Dst.String(), r.GW)
			}
		}
		return nil
	})
}

// Status reports whether the plugin can add containers: weftd must have
// written subnet.env.
func Status(args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "invalid network configuration", err.Error())
	}
	if _, err := conf.readEnv(); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "weft is not ready on this node", err.Error())
	}
	return nil
}

// GC releases the addresses of containers the runtime no longer has (those
// not in cni.dev/valid-attachments).
func GC(args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "invalid network configuration", err.Error())
	}
	released, err := gc(conf, conf.ValidAttachments)
	if err != nil {
		return err
	}
	if env, err := conf.readEnv(); err == nil && conf.ipMasq(env) {
		var ips []*current.IPConfig
		for _, a := range released {
			ips = append(ips, &current.IPConfig{Address: net.IPNet{IP: a.IP.AsSlice()}})
		}
		if err := masquerade(conf, env, ips, false); err != nil {
			return types.NewError(types.ErrInternal, "removing masquerade entries of vanished containers", err.Error())
		}
	}
	return nil
}

// masquerade adds (or removes) the container's addresses to the plugin's
// masquerade sets, creating the table on first use under a file lock.
func masquerade(conf *NetConf, env *subnet.Env, ips []*current.IPConfig, add bool) error {
	conn, err := nftables.New()
	if err != nil {
		return err
	}
	if add {
		lock, err := os.OpenFile(filepath.Join(conf.DataDir, conf.Name, ".nftables.lock"), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return err
		}
		defer lock.Close()
		if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
			return err
		}
		var networks []netip.Prefix
		for _, f := range families(env) {
			if f.network.IsValid() {
				networks = append(networks, f.network)
			}
		}
		if err := masq.EnsureContainerTable(conn, networks); err != nil {
			return err
		}
	}
	for _, c := range ips {
		a, ok := netip.AddrFromSlice(c.Address.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		if add {
			err = masq.AddContainer(conn, a)
		} else {
			err = masq.DelContainer(conn, a)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Funcs are the plugin's verbs for skel.PluginMainFuncs.
var Funcs = skel.CNIFuncs{Add: Add, Del: Del, Check: Check, Status: Status, GC: GC}

// Versions are the CNI spec versions the plugin speaks.
var Versions = version.All
