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
	// direct is the underlay's routing table as the last Sync read it.
	direct *backend.DirectRouter
}

var _ backend.Backend = (*VXLAN)(nil)

// device is the VXLAN device of one address family.
type device struct {
	v6       bool
	name     string
	mac      net.HardwareAddr
	local    netip.Addr // underlay address packets are sent from
	overhead int

	// The device's index as the last Sync read it (0: not read), and how
	// many peers use each FDB entry (peers may share a VTEP MAC).
	index    int
	fdbUsers map[mac]int32
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

// mac is a VTEP MAC address, comparable and allocation-free.
type mac [6]byte

func (m mac) hw() net.HardwareAddr { return net.HardwareAddr(m[:]) }
func (m mac) String() string       { return m.hw().String() }

// entry is what one peer needs on a device: with direct a plain route to
// its subnet via its public address, otherwise a route via gw (its
// subnet's network address) onlink, a neighbour entry gw lladdr mac and an
// FDB entry mac dst public.
type entry struct {
	sn     netip.Prefix
	public netip.Addr
	mac    mac
	direct bool
}

func (e *entry) gw() netip.Addr { return e.sn.Addr() }

// entry says what p needs on d; ok is false when p's lease lacks what d
// needs (said once if warn).
func (v *VXLAN) entry(d *device, p *subnet.Lease, warn bool) (e entry, ok bool) {
	sn, public, data := d.peerSide(p)
	hw := subnet.VtepMAC(data)
	if !sn.IsValid() || !public.IsValid() || len(hw) != len(e.mac) {
		if warn {
			v.once.Warn(v.log, p.Key(), fmt.Sprintf("peer's lease has no %s subnet, address or VTEP MAC; cannot reach it over %s", familyName(d.v6), d.name))
		}
		return entry{}, false
	}
	e = entry{sn: sn, public: public}
	copy(e.mac[:], hw)
	_, e.direct = v.direct.Route(sn, public)
	return e, true
}

// route is the route e needs.
func (v *VXLAN) route(d *device, e *entry) backend.Route {
	if e.direct {
		r, _ := v.direct.Route(e.sn, e.public)
		return r
	}
	return backend.Route{Dst: e.sn, Gw: e.gw(), LinkIndex: d.index, OnLink: true}
}

// state folds what device number i made of a peer into its state: a peer
// is reachable if every family is, and counted direct by its first family.
func state(st *backend.PeerState, i int, e *entry, ok bool) {
	switch {
	case !ok:
		*st = backend.Unreachable
	case i == 0 && e.direct && *st != backend.Unreachable:
		*st = backend.Direct
	}
}

// Sync implements backend.Backend: it reads each device's neighbour and
// FDB entries and makes them match peers.
func (v *VXLAN) Sync(_ context.Context, self subnet.Lease, peers []*subnet.Lease) ([]backend.Route, []backend.PeerState, error) {
	defer v.once.EndSync()
	v.direct = backend.NewDirectRouter(v.env, v.cfg.DirectRouting) // the underlay as it is now
	states := make([]backend.PeerState, len(peers))
	for i := range states {
		states[i] = backend.Encapsulated
	}
	var routes []backend.Route
	var errs []error
	for i, d := range v.devs {
		rs, err := v.syncDevice(d, i, self, peers, states)
		routes = append(routes, rs...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return routes, states, errors.Join(errs...)
}

// syncDevice makes device number i, its address and its entries match
// peers and returns their routes through it.
func (v *VXLAN) syncDevice(d *device, i int, self subnet.Lease, peers []*subnet.Lease, states []backend.PeerState) ([]backend.Route, error) {
	haveNeigh, haveFDB, err := v.readDevice(d, self)
	if err != nil {
		for j := range states {
			states[j] = backend.Unreachable
		}
		return nil, err
	}
	routes := make([]backend.Route, 0, len(peers))
	wantNeigh := make(map[netip.Addr]mac, len(peers))
	d.fdbUsers = make(map[mac]int32, len(peers))
	var errs errList
	for j, p := range peers {
		e, ok := v.entry(d, p, true)
		state(&states[j], i, &e, ok)
		if !ok {
			continue
		}
		routes = append(routes, v.route(d, &e))
		if e.direct {
			continue
		}
		wantNeigh[e.gw()] = e.mac
		d.fdbUsers[e.mac]++
		// Add before delete: new FDB and neighbour entries first, then
		// the stale ones (their routes go when the caller syncs routes).
		if dst, ok := haveFDB[e.mac]; !ok || dst != e.public {
			errs.add(v.setFDB(d, e.mac, e.public))
			haveFDB[e.mac] = e.public
		}
		if m, ok := haveNeigh[e.gw()]; !ok || m != e.mac {
			errs.add(v.setNeigh(d, e.gw(), e.mac))
		}
	}
	for ip, m := range haveNeigh {
		if _, ok := wantNeigh[ip]; !ok {
			errs.add(v.delNeigh(d, ip, m))
		}
	}
	for m, dst := range haveFDB {
		if d.fdbUsers[m] == 0 {
			errs.add(v.delFDB(d, m, dst))
		}
	}
	return routes, errs.join()
}

// Update implements backend.Backend: it sets the entries of new and
// changed peers and deletes those of departed ones, from what their leases
// say, without reading the kernel.
func (v *VXLAN) Update(_ context.Context, _ subnet.Lease, changes []backend.Change) (backend.RouteDelta, []backend.PeerState, error) {
	for _, d := range v.devs {
		if d.index == 0 || d.fdbUsers == nil {
			return backend.RouteDelta{}, nil, fmt.Errorf("%s has not been read yet; a full sync is needed", d.name)
		}
	}
	var delta backend.RouteDelta
	states := make([]backend.PeerState, len(changes))
	for i := range states {
		states[i] = backend.Encapsulated
	}
	var errs errList
	for i, d := range v.devs {
		for j, c := range changes {
			var old, cur entry
			var oldOK, curOK bool
			if c.Old != nil {
				old, oldOK = v.entry(d, c.Old, false)
			}
			if c.New != nil {
				cur, curOK = v.entry(d, c.New, true)
				state(&states[j], i, &cur, curOK)
			}
			if curOK {
				delta.Add = append(delta.Add, v.route(d, &cur))
				if !cur.direct {
					d.fdbUsers[cur.mac]++
					if !oldOK || old.direct || old.mac != cur.mac || old.public != cur.public {
						errs.add(v.setFDB(d, cur.mac, cur.public))
					}
					if !oldOK || old.direct || old.mac != cur.mac {
						errs.add(v.setNeigh(d, cur.gw(), cur.mac))
					}
				}
			}
			if !oldOK {
				continue
			}
			if !curOK {
				delta.Del = append(delta.Del, v.route(d, &old))
			}
			if old.direct {
				continue
			}
			if d.fdbUsers[old.mac]--; d.fdbUsers[old.mac] <= 0 {
				delete(d.fdbUsers, old.mac)
				errs.add(v.delFDB(d, old.mac, old.public))
			}
			if !curOK || cur.direct {
				errs.add(v.delNeigh(d, old.gw(), old.mac))
			}
		}
	}
	return delta, states, errs.join()
}

// errList collects the errors of many netlink calls, most of them nil.
type errList []error

func (l *errList) add(err error) {
	if err != nil {
		*l = append(*l, err)
	}
}

func (l errList) join() error { return errors.Join(l...) }

// readDevice makes d's device exist with self's address and reads its
// neighbour and FDB entries.
func (v *VXLAN) readDevice(d *device, self subnet.Lease) (map[netip.Addr]mac, map[mac]netip.Addr, error) {
	d.index = 0
	link, err := v.ensureDevice(d)
	if err != nil {
		return nil, nil, err
	}
	idx := link.Attrs().Index
	selfSubnet, _, _ := d.peerSide(&self)
	bits := 32
	if d.v6 {
		bits = 128
	}
	if selfSubnet.IsValid() {
		if err := backend.EnsureAddr(v.env.Netlink, link, netip.PrefixFrom(selfSubnet.Addr(), bits)); err != nil {
			return nil, nil, err
		}
	}
	neighs, fdbs, err := v.entries(d, idx)
	if err != nil {
		return nil, nil, err
	}
	d.index = idx
	return neighs, fdbs, nil
}

func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// entries reads the permanent neighbour (IP -> MAC) and FDB (MAC -> dst)
// entries on the device; all of them are weft's.
func (v *VXLAN) entries(d *device, idx int) (neighs map[netip.Addr]mac, fdbs map[mac]netip.Addr, err error) {
	expect := len(d.fdbUsers) // about one entry of each kind per peer
	restart := func() { neighs = make(map[netip.Addr]mac, expect) }
	restart()
	err = backend.DumpNeighs(v.env.NetNS, d.family(), restart, func(n *backend.Neigh) {
		if n.LinkIndex == idx && n.State&netlink.NUD_PERMANENT != 0 && n.IP.IsValid() && n.HasMAC {
			neighs[n.IP] = n.MAC
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("listing neighbours on %s: %w", d.name, err)
	}
	restart = func() { fdbs = make(map[mac]netip.Addr, expect) }
	restart()
	err = backend.DumpNeighs(v.env.NetNS, syscall.AF_BRIDGE, restart, func(f *backend.Neigh) {
		if f.LinkIndex == idx && f.State&netlink.NUD_PERMANENT != 0 && f.IP.IsValid() && !f.IP.IsUnspecified() && f.HasMAC {
			fdbs[f.MAC] = f.IP
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("listing FDB entries on %s: %w", d.name, err)
	}
	return neighs, fdbs, nil
}

func (v *VXLAN) setNeigh(d *device, ip netip.Addr, m mac) error {
	n := &netlink.Neigh{LinkIndex: d.index, Family: d.family(), State: netlink.NUD_PERMANENT, Type: syscall.RTN_UNICAST, IP: ip.AsSlice(), HardwareAddr: m.hw()}
	if err := v.env.Netlink.NeighSet(n); err != nil {
		return fmt.Errorf("adding neighbour %s lladdr %s dev %s: %w", ip, m, d.name, err)
	}
	return nil
}

func (v *VXLAN) delNeigh(d *device, ip netip.Addr, m mac) error {
	n := &netlink.Neigh{LinkIndex: d.index, Family: d.family(), IP: ip.AsSlice(), HardwareAddr: m.hw()}
	if err := v.env.Netlink.NeighDel(n); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("deleting neighbour %s dev %s: %w", ip, d.name, err)
	}
	return nil
}

func (v *VXLAN) setFDB(d *device, m mac, dst netip.Addr) error {
	n := &netlink.Neigh{LinkIndex: d.index, Family: syscall.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT, IP: dst.AsSlice(), HardwareAddr: m.hw()}
	if err := v.env.Netlink.NeighSet(n); err != nil {
		return fmt.Errorf("adding fdb %s dst %s dev %s: %w", m, dst, d.name, err)
	}
	return nil
}

func (v *VXLAN) delFDB(d *device, m mac, dst netip.Addr) error {
	n := &netlink.Neigh{LinkIndex: d.index, Family: syscall.AF_BRIDGE, Flags: netlink.NTF_SELF, IP: dst.AsSlice(), HardwareAddr: m.hw()}
	if err := v.env.Netlink.NeighDel(n); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("deleting fdb %s dst %s dev %s: %w", m, dst, d.name, err)
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
