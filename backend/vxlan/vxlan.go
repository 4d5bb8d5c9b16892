// Package vxlan is weft's VXLAN backend. It programs flannel's per-peer
// scheme, so flannel and weft nodes interoperate: for each peer a permanent
// neighbour entry <peer subnet .0> lladdr <VtepMAC>, an FDB entry <VtepMAC>
// dst <peer PublicIP>, and a route <peer subnet> via <peer subnet .0>
// onlink, all on the device weft.<VNI>.
package vxlan

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

// Overhead is what VXLAN encapsulation over IPv4 adds to a packet.
const Overhead = 50

// defaultPort is the kernel's VXLAN port when none is configured.
const defaultPort = 8472

// VXLAN is the vxlan backend.
type VXLAN struct {
	env  backend.Env
	cfg  subnet.Backend
	name string
	mac  net.HardwareAddr
	log  *logrus.Entry
	once backend.LogOnce
}

var _ backend.Backend = (*VXLAN)(nil)

// LeaseData is the BackendData a vxlan lease publishes (flannel's format).
type LeaseData struct {
	VNI     int
	VtepMAC string
}

// New returns the backend; it touches nothing until Setup.
func New(env backend.Env) (*VXLAN, error) {
	cfg := env.Network.Backend
	if !env.Ext.LocalIP.Is4() {
		return nil, errors.New("vxlan: the external interface has no IPv4 address to send VXLAN from")
	}
	return &VXLAN{
		env:  env,
		cfg:  cfg,
		name: "weft." + strconv.Itoa(cfg.VNI),
		mac:  stableMAC(env.Ext.PublicIP, cfg.VNI),
		log:  env.Log.WithField("backend", subnet.BackendVXLAN),
	}, nil
}

// Type implements backend.Backend.
func (v *VXLAN) Type() string { return subnet.BackendVXLAN }

// DeviceName is the VXLAN device's name, weft.<VNI>.
func (v *VXLAN) DeviceName() string { return v.name }

// MTU implements backend.Backend: the configured MTU, or the underlay's
// minus the encapsulation overhead.
func (v *VXLAN) MTU() int {
	if v.cfg.MTU != 0 {
		return v.cfg.MTU
	}
	return v.env.Ext.MTU - Overhead
}

// stableMAC derives the VTEP MAC from the node's public address and VNI, so
// that a restarted daemon or a re-created device keeps its MAC and peers
// need not be reprogrammed. It is locally administered and unicast.
func stableMAC(ip netip.Addr, vni int) net.HardwareAddr {
	sum := sha256.Sum256([]byte(fmt.Sprintf("weft-vtep/%s/%d", ip, vni)))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&0xfe | 0x02
	return mac
}

// Setup implements backend.Backend: it creates weft.<VNI>, or reuses a
// compatible one left by an earlier run, and publishes its VNI and MAC.
func (v *VXLAN) Setup(ctx context.Context) (backend.Published, error) {
	if _, err := v.ensureDevice(); err != nil {
		return backend.Published{}, err
	}
	data, err := json.Marshal(LeaseData{VNI: v.cfg.VNI, VtepMAC: v.mac.String()})
	if err != nil {
		return backend.Published{}, err
	}
	return backend.Published{Data: data}, nil
}

func (v *VXLAN) wantDevice() *netlink.Vxlan {
	return &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{
			Name:         v.name,
			MTU:          v.MTU(),
			HardwareAddr: v.mac,
		},
		VxlanId:      v.cfg.VNI,
		VtepDevIndex: v.env.Ext.Index,
		SrcAddr:      net.IP(v.env.Ext.LocalIP.AsSlice()),
		Port:         v.port(),
		Learning:     v.cfg.Learning,
		GBP:          v.cfg.GBP,
	}
}

func (v *VXLAN) port() int {
	if v.cfg.Port == 0 {
		return defaultPort
	}
	return v.cfg.Port
}

// ensureDevice makes weft.<VNI> exist, match the configuration and be up.
func (v *VXLAN) ensureDevice() (netlink.Link, error) {
	h := v.env.Netlink
	want := v.wantDevice()
	link, err := h.LinkByName(v.name)
	if err == nil {
		if why := incompatible(link, want); why != "" {
			v.log.WithField("device", v.name).Infof("re-creating the device: %s", why)
			if err := h.LinkDel(link); err != nil {
				return nil, fmt.Errorf("deleting incompatible device %s: %w", v.name, err)
			}
			link = nil
		}
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, fmt.Errorf("looking up device %s: %w", v.name, err)
	} else {
		link = nil
	}
	if link == nil {
		if err := h.LinkAdd(want); err != nil {
			return nil, fmt.Errorf("adding vxlan device %s (vni %d, port %d, local %s): %w", v.name, want.VxlanId, want.Port, want.SrcAddr, err)
		}
		if link, err = h.LinkByName(v.name); err != nil {
			return nil, fmt.Errorf("looking up device %s: %w", v.name, err)
		}
		v.log.WithFields(logrus.Fields{"device": v.name, "vni": want.VxlanId, "port": want.Port, "mtu": want.MTU, "mac": v.mac.String()}).Info("created vxlan device")
	}
	attrs := link.Attrs()
	if attrs.MTU != want.MTU {
		if err := h.LinkSetMTU(link, want.MTU); err != nil {
			return nil, fmt.Errorf("setting MTU %d on %s: %w", want.MTU, v.name, err)
		}
	}
	if attrs.HardwareAddr.String() != v.mac.String() {
		if err := h.LinkSetHardwareAddr(link, v.mac); err != nil {
			return nil, fmt.Errorf("setting MAC %s on %s: %w", v.mac, v.name, err)
		}
	}
	if attrs.Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("bringing up %s: %w", v.name, err)
		}
	}
	return link, nil
}

// incompatible says why an existing device cannot be reused, or "".
func incompatible(link netlink.Link, want *netlink.Vxlan) string {
	have, ok := link.(*netlink.Vxlan)
	switch {
	case !ok:
		return fmt.Sprintf("it is a %s device, not vxlan", link.Type())
	case have.VxlanId != want.VxlanId:
		return fmt.Sprintf("its VNI is %d, want %d", have.VxlanId, want.VxlanId)
	case have.Port != want.Port:
		return fmt.Sprintf("its port is %d, want %d", have.Port, want.Port)
	case !have.SrcAddr.Equal(want.SrcAddr):
		return fmt.Sprintf("its local address is %s, want %s", have.SrcAddr, want.SrcAddr)
	case have.VtepDevIndex != want.VtepDevIndex:
		return fmt.Sprintf("it sends through interface #%d, want #%d", have.VtepDevIndex, want.VtepDevIndex)
	case have.Learning != want.Learning:
		return fmt.Sprintf("its learning is %t, want %t", have.Learning, want.Learning)
	case have.GBP != want.GBP:
		return fmt.Sprintf("its GBP is %t, want %t", have.GBP, want.GBP)
	}
	return ""
}

// peerEntry is what one peer needs on the device.
type peerEntry struct {
	gw     netip.Addr // peer subnet .0, the next hop on the device
	mac    string
	public netip.Addr
}

// Devices implements backend.Backend.
func (v *VXLAN) Devices() []string { return []string{v.name} }

// Sync implements backend.Backend.
func (v *VXLAN) Sync(ctx context.Context, self subnet.Lease, peers []subnet.Lease) ([]backend.Route, backend.Stats, error) {
	var stats backend.Stats
	defer v.once.EndSync()
	link, err := v.ensureDevice()
	if err != nil {
		return nil, stats, err
	}
	idx := link.Attrs().Index
	if err := backend.EnsureAddr(v.env.Netlink, link, netip.PrefixFrom(self.Subnet.Addr(), 32)); err != nil {
		return nil, stats, err
	}

	want := make([]peerEntry, 0, len(peers))
	routes := make([]backend.Route, 0, len(peers))
	direct := backend.NewDirectRouter(v.env, v.cfg.DirectRouting)
	for i := range peers {
		p := &peers[i]
		if p.BackendType != subnet.BackendVXLAN {
			stats.OtherType++
			v.once.Warn(v.log, p.Key(), fmt.Sprintf("peer runs backend %q; not programming it with vxlan", p.BackendType))
			continue
		}
		mac := p.VtepMAC()
		if mac == nil || !p.Subnet.IsValid() {
			stats.Unreachable++
			v.once.Warn(v.log, p.Key(), "peer's lease has no VTEP MAC; cannot reach it over vxlan")
			continue
		}
		if r, ok := direct.Route(p.Subnet, p.PublicIP); ok {
			// DirectRouting: same L2 segment, no encapsulation.
			routes = append(routes, r)
			stats.Direct++
			stats.Programmed++
			continue
		}
		gw := p.Subnet.Addr()
		want = append(want, peerEntry{gw: gw, mac: mac.String(), public: p.PublicIP})
		routes = append(routes, backend.Route{Dst: p.Subnet, Gw: gw, LinkIndex: idx, OnLink: true})
	}

	neighs, fdbs, err := v.entries(idx)
	if err != nil {
		return nil, stats, err
	}
	var errs []error
	// Add before delete: new FDB and neighbour entries first, then the
	// stale ones (their routes go when the caller syncs routes).
	wantNeigh := make(map[netip.Addr]string, len(want))
	wantFDB := make(map[string]netip.Addr, len(want))
	for _, e := range want {
		wantNeigh[e.gw] = e.mac
		wantFDB[e.mac] = e.public
		if fdbs[e.mac] != e.public {
			errs = append(errs, v.setFDB(idx, e.mac, e.public))
		}
		if neighs[e.gw] != e.mac {
			errs = append(errs, v.setNeigh(idx, e.gw, e.mac))
		}
	}
	for ip, mac := range neighs {
		if _, ok := wantNeigh[ip]; !ok {
			errs = append(errs, v.delNeigh(idx, ip, mac))
		}
	}
	for mac, dst := range fdbs {
		if _, ok := wantFDB[mac]; !ok {
			errs = append(errs, v.delFDB(idx, mac, dst))
		}
	}
	stats.Programmed += len(want)
	return routes, stats, errors.Join(errs...)
}

// entries lists the permanent neighbour (IP -> MAC) and FDB (MAC -> dst)
// entries on the device; all of them are weft's.
func (v *VXLAN) entries(idx int) (map[netip.Addr]string, map[string]netip.Addr, error) {
	h := v.env.Netlink
	ns, err := backend.NeighList(h, idx, netlink.FAMILY_V4)
	if err != nil {
		return nil, nil, fmt.Errorf("listing neighbours on %s: %w", v.name, err)
	}
	neighs := make(map[netip.Addr]string, len(ns))
	for _, n := range ns {
		if ip, ok := netip.AddrFromSlice(n.IP); ok && n.State&netlink.NUD_PERMANENT != 0 {
			neighs[ip.Unmap()] = n.HardwareAddr.String()
		}
	}
	fs, err := backend.NeighList(h, idx, syscall.AF_BRIDGE)
	if err != nil {
		return nil, nil, fmt.Errorf("listing FDB entries on %s: %w", v.name, err)
	}
	fdbs := make(map[string]netip.Addr, len(fs))
	for _, f := range fs {
		ip, ok := netip.AddrFromSlice(f.IP)
		if ok && f.LinkIndex == idx && f.State&netlink.NUD_PERMANENT != 0 && !ip.IsUnspecified() {
			fdbs[f.HardwareAddr.String()] = ip.Unmap()
		}
	}
	return neighs, fdbs, nil
}

func (v *VXLAN) setNeigh(idx int, ip netip.Addr, mac string) error {
	hw, _ := net.ParseMAC(mac)
	n := &netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, Type: syscall.RTN_UNICAST, IP: ip.AsSlice(), HardwareAddr: hw}
	if err := v.env.Netlink.NeighSet(n); err != nil {
		return fmt.Errorf("adding neighbour %s lladdr %s dev %s: %w", ip, mac, v.name, err)
	}
	return nil
}

func (v *VXLAN) delNeigh(idx int, ip netip.Addr, mac string) error {
	hw, _ := net.ParseMAC(mac)
	n := &netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, IP: ip.AsSlice(), HardwareAddr: hw}
	if err := v.env.Netlink.NeighDel(n); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("deleting neighbour %s dev %s: %w", ip, v.name, err)
	}
	return nil
}

func (v *VXLAN) setFDB(idx int, mac string, dst netip.Addr) error {
	hw, _ := net.ParseMAC(mac)
	n := &netlink.Neigh{LinkIndex: idx, Family: syscall.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT, IP: dst.AsSlice(), HardwareAddr: hw}
	if err := v.env.Netlink.NeighSet(n); err != nil {
		return fmt.Errorf("adding fdb %s dst %s dev %s: %w", mac, dst, v.name, err)
	}
	return nil
}

func (v *VXLAN) delFDB(idx int, mac string, dst netip.Addr) error {
	hw, _ := net.ParseMAC(mac)
	n := &netlink.Neigh{LinkIndex: idx, Family: syscall.AF_BRIDGE, Flags: netlink.NTF_SELF, IP: dst.AsSlice(), HardwareAddr: hw}
	if err := v.env.Netlink.NeighDel(n); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("deleting fdb %s dst %s dev %s: %w", mac, dst, v.name, err)
	}
	return nil
}

// Teardown implements backend.Backend: it deletes the device; the kernel
// drops its neighbour and FDB entries and routes with it.
func (v *VXLAN) Teardown(ctx context.Context) error {
	h := v.env.Netlink
	if link, err := h.LinkByName(v.name); err == nil {
		if err := h.LinkDel(link); err != nil {
			return fmt.Errorf("deleting device %s: %w", v.name, err)
		}
		v.log.WithField("device", v.name).Info("deleted vxlan device")
	}
	return nil
}
