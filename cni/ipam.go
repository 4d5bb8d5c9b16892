package cni

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"

	"github.com/weft-net/weft/subnet"
)

// family is one address family of the node's subnet.
type family struct {
	gateway netip.Prefix // FLANNEL_SUBNET: gateway address and subnet length
	network netip.Prefix // FLANNEL_NETWORK: the whole pod network
}

func families(env *subnet.Env) []family {
	var fs []family
	if env.Subnet.IsValid() {
		fs = append(fs, family{gateway: env.Subnet, network: env.Network})
	}
	if env.IPv6Subnet.IsValid() {
		fs = append(fs, family{gateway: env.IPv6Subnet, network: env.IPv6Network})
	}
	return fs
}

// openStore opens host-local's store for the network, a directory only
// root may enter (mode 0750): it says which container has which address.
func openStore(conf *NetConf) (*disk.Store, error) {
	store, err := disk.New(conf.Name, conf.DataDir)
	if err != nil {
		return nil, fmt.Errorf("opening the address store in %s: %w", conf.DataDir, err)
	}
	if err := os.Chmod(filepath.Join(conf.DataDir, conf.Name), 0o750); err != nil {
		store.Close()
		return nil, err
	}
	return store, nil
}

// allocate gives the container one address per family, or returns those
// it already has (a repeated ADD). Allocation is safe across concurrent
// plugin runs: host-local's store locks its directory.
func allocate(conf *NetConf, env *subnet.Env, id, ifName string) ([]*current.IPConfig, error) {
	store, err := openStore(conf)
	if err != nil {
		return nil, err
	}
	defer store.Close()

	var ips []*current.IPConfig
	for i, f := range families(env) {
		sn := f.gateway.Masked()
		gw := net.IP(f.gateway.Addr().AsSlice())
		rs := allocator.RangeSet{{Subnet: types.IPNet(*ipNet(sn)), Gateway: gw}}
		if err := rs.Canonicalize(); err != nil {
			return nil, fmt.Errorf("address range %s: %w", sn, err)
		}
		if existing := addrIn(store.GetByID(id, ifName), sn); existing != nil {
			ips = append(ips, &current.IPConfig{Address: net.IPNet{IP: existing, Mask: ipNet(sn).Mask}, Gateway: gw, Interface: current.Int(2)})
			continue
		}
		ipc, err := allocator.NewIPAllocator(&rs, store, i).Get(id, ifName, nil)
		if err != nil {
			release(conf, id, ifName)
			if strings.Contains(err.Error(), "no IP addresses available") {
				return nil, fmt.Errorf("no free address left in %s: every address of this node's subnet is allocated (see %s)", sn, filepath.Join(conf.DataDir, conf.Name))
			}
			return nil, fmt.Errorf("allocating an address in %s: %w", sn, err)
		}
		ipc.Interface = current.Int(2)
		ips = append(ips, ipc)
	}
	return ips, nil
}

// addrIn returns the address of ips inside sn, or nil.
func addrIn(ips []net.IP, sn netip.Prefix) net.IP {
	for _, ip := range ips {
		if a, ok := netip.AddrFromSlice(ip); ok && sn.Contains(a.Unmap()) {
			return ip
		}
	}
	return nil
}

// allocated returns the container's addresses.
func allocated(conf *NetConf, id, ifName string) ([]net.IP, error) {
	store, err := openStore(conf)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	return store.GetByID(id, ifName), nil
}

// release frees the container's addresses; releasing nothing is fine.
func release(conf *NetConf, id, ifName string) error {
	store, err := openStore(conf)
	if err != nil {
		return err
	}
	defer store.Close()
	store.Lock()
	defer store.Unlock()
	return store.ReleaseByID(id, ifName)
}

// Allocation is one address held in the store.
type Allocation struct {
	IP          netip.Addr
	ContainerID string
	IfName      string
}

// allocations lists the store's addresses (host-local's layout: one file
// per address holding "<id>\r\n<ifname>"). The caller holds the lock.
func allocations(dir string) ([]Allocation, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Allocation
	for _, e := range entries {
		ip, err := netip.ParseAddr(e.Name())
		if err != nil || e.IsDir() {
			continue // lock file, last_reserved_ip.N
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		id, ifName, _ := strings.Cut(strings.TrimSpace(string(b)), "\r\n")
		out = append(out, Allocation{IP: ip, ContainerID: strings.TrimSpace(id), IfName: strings.TrimSpace(ifName)})
	}
	return out, nil
}

// gc releases every allocation whose container is not in valid, and
// returns what it released.
func gc(conf *NetConf, valid []types.GCAttachment) ([]Allocation, error) {
	store, err := openStore(conf)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	store.Lock()
	defer store.Unlock()
	keep := make(map[types.GCAttachment]bool, len(valid))
	for _, a := range valid {
		keep[a] = true
	}
	all, err := allocations(filepath.Join(conf.DataDir, conf.Name))
	if err != nil {
		return nil, err
	}
	var released []Allocation
	for _, a := range all {
		if keep[types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName}] {
			continue
		}
		if err := os.Remove(filepath.Join(conf.DataDir, conf.Name, a.IP.String())); err != nil && !os.IsNotExist(err) {
			return released, fmt.Errorf("releasing %s: %w", a.IP, err)
		}
		released = append(released, a)
	}
	return released, nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
