// Package vxlan is weft's VXLAN backend. It programs flannel's per-peer
// scheme, so flannel and weft nodes interoperate: for each peer a permanent
// neighbour entry <peer subnet .0> lladdr <VtepMAC>, an FDB entry <VtepMAC>
// dst <peer PublicIP>, and a route <peer subnet> via <peer subnet .0>
// onlink, on the device weft.<VNI> over IPv4 and, for IPv6 pod networks,
// the same on weft-v6.<VNI> over IPv6.
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

// Overhead is what VXLAN encapsulation over IPv4 adds to a packet;
// Overhead6 what it adds over IPv6.
const (
	Overhead  = 50
	Overhead6 = 70
)

// defaultPort is the kernel's VXLAN port when none is configured.
const defaultPort = 8472

// VXLAN is the vxlan backend.
type VXLAN struct {
	env  backend.Env
	cfg  subnet.Backend
	devs []*device // one per enabled address family, IPv4 first
	log  *logrus.Entry
	once backend.LogOnce
	macs map[string]net.HardwareAddr // parsed VtepMACs by backend data
}

var _ backend.Backend = (*VXLAN)(nil)

// device is the VXLAN device of one address family.
type device struct {
	v6       bool
	name     string
	mac      net.HardwareAddr
	local    netip.Addr // underlay address packets are sent from
	overhead int

	// The device's index and what it holds as far as weft knows (nil
	// neighs: read the kernel next time): neighbour IP -> MAC, FDB MAC ->
	// destination.
	index  int
	neighs map[netip.Addr]string
	fdbs   map[string]netip.Addr
}

func (d *device) family() int {
	if d.v6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// peerSide is what a peer's lease says about the family of d.
func (d *device) peerSide(p *subnet.Lease) (sn netip.Prefix, public netip.Addr, data json.RawMessage) {
	if d.v6 {
		return p.IPv6Subnet, p.PublicIPv6, p.BackendV6Data
	}
	return p.Subnet, p.PublicIP, p.BackendData
}

// LeaseData is the BackendData (and BackendV6Data) a vxlan lease
// publishes (flannel's format).
type LeaseData struct {
	VNI     int
	VtepMAC string
}

// New returns the backend; it touches nothing until Setup.
func New(env backend.Env) (*VXLAN, error) {
	cfg := env.Network.Backend
	v := &VXLAN{env: env, cfg: cfg, log: env.Log.WithField("backend", subnet.BackendVXLAN)}
	vni := strconv.Itoa(cfg.VNI)
	if env.Network.IPv4.Enabled() {
		if !env.Ext.LocalIP.Is4() {
			return nil, errors.New("vxlan: the external interface has no IPv4 address to send VXLAN from")
		}
		v.devs = append(v.devs, &device{name: "weft." + vni, mac: stableMAC(env.Ext.PublicIP, cfg.VNI), local: env.Ext.LocalIP, overhead: Overhead})
	}
	if env.Network.IPv6.Enabled() {
		if !env.Ext.LocalIPv6.Is6() {
			return nil, errors.New("vxlan: the external interface has no IPv6 address to send VXLAN from")
		}
		v.devs = append(v.devs, &device{v6: true, name: "weft-v6." + vni, mac: stableMAC(env.Ext.PublicIPv6, cfg.VNI), local: env.Ext.LocalIPv6, overhead: Overhead6})
	}
	return v, nil
}

// Type implements backend.Backend.
func (v *VXLAN) Type() string { return subnet.BackendVXLAN }

// Devices implements backend.Backend.
func (v *VXLAN) Devices() []string {
	var names []string
	for _, d := range v.devs {
		names = append(names, d.name)
	}
	return names
}

// MTU implements backend.Backend: the configured MTU, or the underlay's
// minus the largest encapsulation overhead in use (so that pods fit both
// families' tunnels).
func (v *VXLAN) MTU() int {
	if v.cfg.MTU != 0 {
		return v.cfg.MTU
	}
	mtu := v.env.Ext.MTU - Overhead
	for _, d := range v.devs {
		mtu = min(mtu, v.env.Ext.MTU-d.overhead)
	}
	return mtu
}

func (v *VXLAN) deviceMTU(d *device) int {
	if v.cfg.MTU != 0 {
		return v.cfg.MTU
	}
	return v.env.Ext.MTU - d.overhead
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

// Setup implements backend.Backend: it creates the devices, or reuses
// compatible ones left by an earlier run, and publishes their VNI and MACs.
func (v *VXLAN) Setup(ctx context.Context) (backend.Published, error) {
	var pub backend.Published
	for _, d := range v.devs {
		if _, err := v.ensureDevice(d); err != nil {
			return backend.Published{}, err
		}
		data, err := json.Marshal(LeaseData{VNI: v.cfg.VNI, VtepMAC: d.mac.String()})
		if err != nil {
			return backend.Published{}, err
		}
		if d.v6 {
			pub.V6Data = data
		} else {
			pub.Data = data
		}
	}
	return pub, nil
}

func (v *VXLAN) wantDevice(d *device) *netlink.Vxlan {
	return &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{
			Name:         d.name,
			MTU:          v.deviceMTU(d),
			HardwareAddr: d.mac,
		},
		VxlanId:      v.cfg.VNI,
		VtepDevIndex: v.env.Ext.Index,
		SrcAddr:      net.IP(d.local.AsSlice()),
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

// ensureDevice makes d exist, match the configuration and be up.
func (v *VXLAN) ensureDevice(d *device) (netlink.Link, error) {
	h := v.env.Netlink
	want := v.wantDevice(d)
	link, err := h.LinkByName(d.name)
	if err == nil {
		if why := incompatible(link, want); why != "" {
			v.log.WithField("device", d.name).Infof("re-creating the device: %s", why)
			if err := h.LinkDel(link); err != nil {
				return nil, fmt.Errorf("deleting incompatible device %s: %w", d.name, err)
			}
			link = nil
		}
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, fmt.Errorf("looking up device %s: %w", d.name, err)
	} else {
		link = nil
	}
	if link == nil {
		if err := h.LinkAdd(want); err != nil {
			return nil, fmt.Errorf("adding vxlan device %s (vni %d, port %d, local %s): %w", d.name, want.VxlanId, want.Port, want.SrcAddr, err)
		}
		if link, err = h.LinkByName(d.name); err != nil {
			return nil, fmt.Errorf("looking up device %s: %w", d.name, err)
		}
		v.log.WithFields(logrus.Fields{"device": d.name, "vni": want.VxlanId, "port": want.Port, "mtu": want.MTU, "mac": d.mac.String()}).Info("created vxlan device")
	}
	attrs := link.Attrs()
	if attrs.MTU != want.MTU {
		if err := h.LinkSetMTU(link, want.MTU); err != nil {
			return nil, fmt.Errorf("setting MTU %d on %s: %w", want.MTU, d.name, err)
		}
	}
	if attrs.HardwareAddr.String() != d.mac.String() {
		if err := h.LinkSetHardwareAddr(link, d.mac); err != nil {
			return nil, fmt.Errorf("setting MAC %s on %s: %w", d.mac, d.name, err)
		}
	}
	if attrs.Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("bringing up %s: %w", d.name, err)
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

// peerEntry is what one peer needs on a device.
type peerEntry struct {
	gw     netip.Addr // peer subnet's network address, the next hop on the device
	mac    string
	public netip.Addr
}

// Sync implements backend.Backend.
func (v *VXLAN) Sync(ctx context.Context, self subnet.Lease, peers []subnet.Lease, verify bool) ([]backend.Route, backend.Stats, error) {
	var stats backend.Stats
	defer v.once.EndSync()
	direct := backend.NewDirectRouter(v.env, v.cfg.DirectRouting)
	var routes []backend.Route
	var errs []error
	ok := make([]bool, len(peers)) // a peer counts as programmed if every family is
	for i := range ok {
		ok[i] = true
	}
	if v.macs == nil || len(v.macs) > 2*len(peers)+64 {
		v.macs = make(map[string]net.HardwareAddr, len(peers)) // drop departed peers' entries
	}
	for _, d := range v.devs {
		rs, err := v.syncDevice(d, self, peers, direct, ok, &stats, verify)
		routes = append(routes, rs...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	for i := range peers {
		switch {
		case peers[i].BackendType != subnet.BackendVXLAN:
			stats.OtherType++
			v.once.Warn(v.log, peers[i].Key(), fmt.Sprintf("peer runs backend %q; not programming it with vxlan", peers[i].BackendType))
		case ok[i]:
			stats.Programmed++
		default:
			stats.Unreachable++
		}
	}
	return routes, stats, errors.Join(errs...)
}

// vtepMAC parses a peer's VtepMAC once per distinct backend data.
func (v *VXLAN) vtepMAC(data []byte) net.HardwareAddr {
	if mac, ok := v.macs[string(data)]; ok {
		return mac
	}
	mac := subnet.VtepMAC(data)
	v.macs[string(data)] = mac
	return mac
}

// syncDevice programs one family's device and returns its routes. It
// clears ok[i] for peers it cannot reach.
func (v *VXLAN) syncDevice(d *device, self subnet.Lease, peers []subnet.Lease, direct *backend.DirectRouter, ok []bool, stats *backend.Stats, verify bool) ([]backend.Route, error) {
	// The device, its address and its entries are read from the kernel on
	// a verifying sync (and after a failure); otherwise the last reading
	// stands (a deleted device is a kernel event, which schedules one).
	if verify || d.neighs == nil {
		if err := v.readDevice(d, self); err != nil {
			for i := range ok {
				ok[i] = false
			}
			return nil, err
		}
	}
	idx := d.index

	want := make([]peerEntry, 0, len(peers))
	routes := make([]backend.Route, 0, len(peers))
	for i := range peers {
		p := &peers[i]
		if p.BackendType != subnet.BackendVXLAN {
			continue
		}
		sn, public, data := d.peerSide(p)
		mac := v.vtepMAC(data)
		if !sn.IsValid() || !public.IsValid() || mac == nil {
			ok[i] = false
			v.once.Warn(v.log, p.Key(), fmt.Sprintf("peer's lease has no %s subnet, address or VTEP MAC; cannot reach it over %s", familyName(d.v6), d.name))
			continue
		}
		if r, isDirect := direct.Route(sn, public); isDirect {
			routes = append(routes, r)
			if !d.v6 || !self.Subnet.IsValid() { // count each peer once
				stats.Direct++
			}
			continue
		}
		gw := sn.Addr()
		want = append(want, peerEntry{gw: gw, mac: mac.String(), public: public})
		routes = append(routes, backend.Route{Dst: sn, Gw: gw, LinkIndex: idx, OnLink: true})
	}

	neighs, fdbs := d.neighs, d.fdbs
	var errs []error
	// Add before delete: new FDB and neighbour entries first, then the
	// stale ones (their routes go when the caller syncs routes).
	wantNeigh := make(map[netip.Addr]string, len(want))
	wantFDB := make(map[string]netip.Addr, len(want))
	for _, e := range want {
		wantNeigh[e.gw] = e.mac
		wantFDB[e.mac] = e.public
		if fdbs[e.mac] != e.public {
			if err := v.setFDB(d, idx, e.mac, e.public); err != nil {
				errs = append(errs, err)
			} else {
				fdbs[e.mac] = e.public
			}
		}
		if neighs[e.gw] != e.mac {
			if err := v.setNeigh(d, idx, e.gw, e.mac); err != nil {
				errs = append(errs, err)
			} else {
				neighs[e.gw] = e.mac
			}
		}
	}
	for ip, mac := range neighs {
		if _, ok := wantNeigh[ip]; !ok {
			if err := v.delNeigh(d, idx, ip, mac); err != nil {
				errs = append(errs, err)
			} else {
				delete(neighs, ip)
			}
		}
	}
	for mac, dst := range fdbs {
		if _, ok := wantFDB[mac]; !ok {
			if err := v.delFDB(d, idx, mac, dst); err != nil {
				errs = append(errs, err)
			} else {
				delete(fdbs, mac)
			}
		}
	}
	if len(errs) > 0 {
		d.neighs = nil // read the kernel again next time
	}
	return routes, errors.Join(errs...)
}

// readDevice makes d's device exist with self's address and reads its
// neighbour and FDB entries.
func (v *VXLAN) readDevice(d *device, self subnet.Lease) error {
	d.neighs = nil
	link, err := v.ensureDevice(d)
	if err != nil {
		return err
	}
	idx := link.Attrs().Index
	selfSubnet, _, _ := d.peerSide(&self)
	bits := 32
	if d.v6 {
		bits = 128
	}
	if selfSubnet.IsValid() {
		if err := backend.EnsureAddr(v.env.Netlink, link, netip.PrefixFrom(selfSubnet.Addr(), bits)); err != nil {
			return err
		}
	}
	neighs, fdbs, err := v.entries(d, idx)
	if err != nil {
		return err
	}
	d.index, d.neighs, d.fdbs = idx, neighs, fdbs
	return nil
}

func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// entries lists the permanent neighbour (IP -> MAC) and FDB (MAC -> dst)
// entries on the device; all of them are weft's.
func (v *VXLAN) entries(d *device, idx int) (map[netip.Addr]string, map[string]netip.Addr, error) {
	h := v.env.Netlink
	ns, err := backend.NeighList(h, idx, d.family())
	if err != nil {
		return nil, nil, fmt.Errorf("listing neighbours on %s: %w", d.name, err)
	}
	neighs := make(map[netip.Addr]string, len(ns))
	for _, n := range ns {
		if ip, ok := netip.AddrFromSlice(n.IP); ok && n.State&netlink.NUD_PERMANENT != 0 {
			neighs[ip.Unmap()] = n.HardwareAddr.String()
		}
	}
	fs, err := backend.NeighList(h, idx, syscall.AF_BRIDGE)
	if err != nil {
		return nil, nil, fmt.Errorf("listing FDB entries on %s: %w", d.name, err)
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

func (v *VXLAN) setNeigh(d *device, idx int, ip netip.Addr, mac string) error {
	hw, _ := net.ParseMAC(mac)
	n := &netlink.Neigh{LinkIndex: idx, Family: d.family(), State: netlink.NUD_PERMANENT, Type: syscall.RTN_UNICAST, IP: ip.AsSlice(), HardwareAddr: hw}
	if err := v.env.Netlink.NeighSet(n); err != nil {
		return fmt.Errorf("adding neighbour %s lladdr %s dev %s: %w", ip, mac, d.name, err)
	}
	return nil
}

func (v *VXLAN) delNeigh(d *device, idx int, ip netip.Addr, mac string) error {
	hw, _ := net.ParseMAC(mac)
	n := &netlink.Neigh{LinkIndex: idx, Family: d.family(), IP: ip.AsSlice(), HardwareAddr: hw}
	if err := v.env.Netlink.NeighDel(n); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("deleting neighbour %s dev %s: %w", ip, d.name, err)
	}
	return nil
}

func (v *VXLAN) setFDB(d *device, idx int, mac string, dst netip.Addr) error {
	hw, _ := net.ParseMAC(mac)
	n := &netlink.Neigh{LinkIndex: idx, Family: syscall.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT, IP: dst.AsSlice(), HardwareAddr: hw}
	if err := v.env.Netlink.NeighSet(n); err != nil {
		return fmt.Errorf("adding fdb %s dst %s dev %s: %w", mac, dst, d.name, err)
	}
	return nil
}

func (v *VXLAN) delFDB(d *device, idx int, mac string, dst netip.Addr) error {
	hw, _ := net.ParseMAC(mac)
	n := &netlink.Neigh{LinkIndex: idx, Family: syscall.AF_BRIDGE, Flags: netlink.NTF_SELF, IP: dst.AsSlice(), HardwareAddr: hw}
	if err := v.env.Netlink.NeighDel(n); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("deleting fdb %s dst %s dev %s: %w", mac, dst, d.name, err)
	}
	return nil
}

// Teardown implements backend.Backend: it deletes the devices; the kernel
// drops their neighbour and FDB entries and routes with them.
func (v *VXLAN) Teardown(ctx context.Context) error {
	h := v.env.Netlink
	for _, d := range v.devs {
		if link, err := h.LinkByName(d.name); err == nil {
			if err := h.LinkDel(link); err != nil {
				return fmt.Errorf("deleting device %s: %w", d.name, err)
			}
			v.log.WithField("device", d.name).Info("deleted vxlan device")
		}
	}
	return nil
}
