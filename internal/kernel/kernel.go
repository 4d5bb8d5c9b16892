// Package kernel is weft's one layer between what the node should hold and
// the kernel: routes, neighbour and FDB entries, devices and their
// addresses. Backends say what one peer needs (Entries); Kernel applies the
// difference, with the same diff for an incremental update (the entries
// of the changed peers before and after) and for a full sync (everything
// wanted against a streamed dump of the kernel). See docs/architecture.md.
package kernel

import (
	"bytes"
	"cmp"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
)

// RouteProtocol is the routing protocol number on every route weft
// installs (`ip route show proto 87`). A full sync removes stale routes
// carrying it and never touches routes without it.
const RouteProtocol = 87

// mainTable is the routing table weft's routes live in.
const mainTable = 254

// Route is a route weft wants: to Dst via Gw, a gateway on LinkIndex's
// segment, or with OnLink a next hop the device reaches directly.
type Route struct {
	Dst       netip.Prefix
	Gw        netip.Addr
	LinkIndex int
	OnLink    bool
}

// compare orders routes by destination.
func (r Route) compare(o Route) int { return comparePrefix(r.Dst, o.Dst) }

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

func (r Route) String() string {
	s := fmt.Sprintf("%s via %s dev #%d", r.Dst, r.Gw, r.LinkIndex)
	if r.OnLink {
		s += " onlink"
	}
	return s
}

// RouteMetric is the metric of weft's route to dst: 1024 to 5119, fixed
// by dst. The kernel hashes IPv4 routes by device, protocol, scope and
// metric but not by gateway, so 10,000 routes through one device, each via
// its own gateway (flannel's vxlan scheme, host-gw), all share one hash
// chain and each insert walks it: 1.6 s for 10,000 here. Spreading the
// metric keeps the chains short (0.16 s). Metrics only rank routes to the
// same destination, so the choice changes no forwarding.
func RouteMetric(dst netip.Prefix) int {
	h := fnv.New32a()
	b := dst.Addr().As16()
	h.Write(b[:])
	h.Write([]byte{byte(dst.Bits())})
	return 1024 + int(h.Sum32()%4096)
}

// MAC is a link-layer address, comparable and allocation-free.
type MAC [6]byte

// MACFrom converts a six-byte hardware address; ok is false for any other
// length.
func MACFrom(hw net.HardwareAddr) (m MAC, ok bool) {
	if len(hw) != len(m) {
		return m, false
	}
	copy(m[:], hw)
	return m, true
}

// HW returns m for netlink calls.
func (m MAC) HW() net.HardwareAddr { return net.HardwareAddr(m[:]) }
func (m MAC) String() string       { return m.HW().String() }

// Neigh is a permanent neighbour entry: IP is at MAC on the device
// LinkIndex.
type Neigh struct {
	LinkIndex int
	IP        netip.Addr
	MAC       MAC
}

// compare orders neighbour entries by device and address.
func (n Neigh) compare(o Neigh) int {
	if c := cmp.Compare(n.LinkIndex, o.LinkIndex); c != 0 {
		return c
	}
	return n.IP.Compare(o.IP)
}

// FDB is a permanent forwarding database entry of a VXLAN device: frames
// for MAC go to the tunnel endpoint Dst.
type FDB struct {
	LinkIndex int
	MAC       MAC
	Dst       netip.Addr
}

type fdbKey struct {
	link int
	mac  MAC
}

func (f FDB) key() fdbKey { return fdbKey{f.LinkIndex, f.MAC} }

// compare orders FDB entries by device and MAC.
func (f FDB) compare(o FDB) int {
	if c := cmp.Compare(f.LinkIndex, o.LinkIndex); c != 0 {
		return c
	}
	return bytes.Compare(f.MAC[:], o.MAC[:])
}

// Entries is what one peer needs in the kernel. A backend appends to it;
// its slices are reused from peer to peer.
type Entries struct {
	Routes []Route
	Neighs []Neigh
	FDBs   []FDB
}

// Reset empties e, keeping its storage.
func (e *Entries) Reset() {
	e.Routes, e.Neighs, e.FDBs = e.Routes[:0], e.Neighs[:0], e.FDBs[:0]
}

// Clone returns a copy of e that shares no storage with it.
func (e *Entries) Clone() *Entries {
	return &Entries{Routes: clone(e.Routes), Neighs: clone(e.Neighs), FDBs: clone(e.FDBs)}
}

func clone[E any](s []E) []E {
	if len(s) == 0 {
		return nil
	}
	return append([]E(nil), s...)
}

// PrefixToIPNet converts for netlink calls.
func PrefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// IPNetToPrefix converts what netlink returns.
func IPNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(addr.Unmap(), ones), true
}
