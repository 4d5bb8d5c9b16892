// Package vxlan is weft's VXLAN backend. It says what flannel's per-peer
// scheme needs, so flannel and weft nodes interoperate: for each peer a
// permanent neighbour entry <peer subnet .0> lladdr <VtepMAC>, an FDB entry
// <VtepMAC> dst <peer PublicIP>, and a route <peer subnet> via <peer subnet
// .0> onlink, on the device weft.<VNI> over IPv4 and, for IPv6 pod networks,
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

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/kernel"
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
	h    netlinksafe.Handle
	cfg  subnet.Backend
	log  *logrus.Entry
	devs []*device // one per address family of the network, IPv4 first
	ext  *backend.ExternalInterface
}

var _ backend.Backend = (*VXLAN)(nil)

// device is the VXLAN device of one address family.
type device struct {
	ipv6     bool
	name     string
	overhead int
	// Set by Setup: the device's MAC (derived from the node's public
	// address) and index.
	mac   kernel.MAC
	index int
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
	v := &VXLAN{h: env.Netlink, cfg: cfg, log: env.Log.WithField("backend", subnet.BackendVXLAN)}
	vni := strconv.Itoa(cfg.VNI)
	for _, pool := range env.Network.Pools() {
		d := &device{name: "weft." + vni, overhead: Overhead}
		if pool.IPv6() {
			d = &device{ipv6: true, name: "weft-v6." + vni, overhead: Overhead6}
		}
		v.devs = append(v.devs, d)
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

// Links implements backend.Backend.
func (v *VXLAN) Links() []int {
	var idx []int
	for _, d := range v.devs {
		if d.index != 0 {
			idx = append(idx, d.index)
		}
	}
	return idx
}

// MTU implements backend.Backend: the configured MTU, or the underlay's
// minus the largest encapsulation overhead in use (so that pods fit both
// families' tunnels).
func (v *VXLAN) MTU() int {
	if v.cfg.MTU != 0 {
		return v.cfg.MTU
	}
	if v.ext == nil {
		return 0
	}
	mtu := v.ext.MTU - Overhead
	for _, d := range v.devs {
		mtu = min(mtu, v.ext.MTU-d.overhead)
	}
	return mtu
}

func (v *VXLAN) deviceMTU(d *device, ext *backend.ExternalInterface) int {
	if v.cfg.MTU != 0 {
		return v.cfg.MTU
	}
	return ext.MTU - d.overhead
}

// stableMAC derives the VTEP MAC from the node's public address and VNI, so
// that a restarted daemon or a re-created device keeps its MAC and peers
// need not be reprogrammed. It is locally administered and unicast.
func stableMAC(ip netip.Addr, vni int) kernel.MAC {
	sum := sha256.Sum256([]byte(fmt.Sprintf("weft-vtep/%s/%d", ip, vni)))
	mac := kernel.MAC(sum[:6])
	mac[0] = mac[0]&0xfe | 0x02
	return mac
}

// Setup implements backend.Backend: it creates the devices, or reuses
// compatible ones left by an earlier run, gives each the network address
// of self's subnet of its family, and publishes their VNI and MACs.
func (v *VXLAN) Setup(_ context.Context, ext *backend.ExternalInterface, self *subnet.Lease) (backend.Published, error) {
	var pub backend.Published
	for _, d := range v.devs {
		local := ext.Local(d.ipv6)
		if !local.IsValid() {
			return backend.Published{}, fmt.Errorf("vxlan: the external interface %s has no %s address to send VXLAN from", ext.Name, subnet.Family{IPv6: d.ipv6}.Name())
		}
		d.mac = stableMAC(ext.Public(d.ipv6), v.cfg.VNI)
		want := v.wantDevice(d, ext, local)
		link, err := kernel.EnsureLink(v.h, kernel.LinkSpec{Link: want, Adopt: func(have netlink.Link) string { return incompatible(have, want) }, Replace: true}, v.log)
		if err != nil {
			return backend.Published{}, err
		}
		d.index = link.Attrs().Index
		if sn := self.Family(d.ipv6).Subnet; sn.IsValid() {
			if err := kernel.EnsureAddr(v.h, link, netip.PrefixFrom(sn.Addr(), sn.Addr().BitLen())); err != nil {
				return backend.Published{}, err
			}
		}
		data, err := json.Marshal(LeaseData{VNI: v.cfg.VNI, VtepMAC: d.mac.String()})
		if err != nil {
			return backend.Published{}, err
		}
		if d.ipv6 {
			pub.V6Data = data
		} else {
			pub.Data = data
		}
	}
	v.ext = ext
	return pub, nil
}

func (v *VXLAN) wantDevice(d *device, ext *backend.ExternalInterface, local netip.Addr) *netlink.Vxlan {
	return &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{
			Name:         d.name,
			MTU:          v.deviceMTU(d, ext),
			HardwareAddr: d.mac.HW(),
		},
		VxlanId:      v.cfg.VNI,
		VtepDevIndex: ext.Index,
		SrcAddr:      net.IP(local.AsSlice()),
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

// Peer implements backend.Backend. On each device: with DirectRouting and
// the peer on this node's segment, a plain route via its public address;
// otherwise flannel's route, neighbour and FDB entry. A peer is reachable
// if every family is, and counted direct by its first family.
func (v *VXLAN) Peer(p *subnet.Lease, u *backend.Underlay, e *kernel.Entries) (backend.PeerState, string) {
	st := backend.Encapsulated
	why := ""
	for i, d := range v.devs {
		f := p.Family(d.ipv6)
		mac, ok := kernel.MACFrom(subnet.VtepMAC(f.BackendData))
		if !f.Subnet.IsValid() || !f.PublicIP.IsValid() || !ok {
			st = backend.Unreachable
			why = fmt.Sprintf("peer's lease has no %s subnet, address or VTEP MAC; cannot reach it over %s", f.Name(), d.name)
			continue
		}
		if v.cfg.DirectRouting {
			if r, ok := u.Direct(f.Subnet, f.PublicIP); ok {
				e.Routes = append(e.Routes, r)
				if i == 0 && st != backend.Unreachable {
					st = backend.Direct
				}
				continue
			}
		}
		gw := f.Subnet.Addr()
		e.Routes = append(e.Routes, kernel.Route{Dst: f.Subnet, Gw: gw, LinkIndex: d.index, OnLink: true})
		e.Neighs = append(e.Neighs, kernel.Neigh{LinkIndex: d.index, IP: gw, MAC: mac})
		e.FDBs = append(e.FDBs, kernel.FDB{LinkIndex: d.index, MAC: mac, Dst: f.PublicIP})
	}
	return st, why
}

// Teardown implements backend.Backend: it deletes the devices; the kernel
// drops their neighbour and FDB entries and routes with them.
func (v *VXLAN) Teardown(context.Context) error {
	var errs []error
	for _, d := range v.devs {
		deleted, err := kernel.DeleteLink(v.h, d.name)
		if deleted {
			v.log.WithField("device", d.name).Info("deleted vxlan device")
		}
		errs = append(errs, err)
		d.index = 0
	}
	return errors.Join(errs...)
}
