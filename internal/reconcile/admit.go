package reconcile

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"

	"github.com/weft-net/weft/subnet"
)

// admit chooses which leases of other nodes may be programmed: a lease
// that is unfit whatever the others say (see unfit), or claims a subnet
// another lease already claims, is refused, so no peer can route this node's pods away or hijack the
// underlay. Of two leases claiming one subnet, or overlapping subnets of
// different lengths, the smaller key keeps it, so every node refuses the
// same one. It returns the refused keys with the
// reason; contended marks those refused for a subnet another lease holds.
func admit(all map[string]*peer, self subnet.Lease, f fences) (refused map[string]string, contended map[string]bool) {
	// Leases that overlap this node or the underlay are out whatever the
	// others hold; of the rest, the smallest key claiming a subnet keeps
	// it: the same choice on every node, found in one pass without
	// sorting.
	refused, contended = map[string]string{}, map[string]bool{}
	owner := make(map[netip.Prefix]string, len(all))
	for k, p := range all {
		if why := unfit(p.lease, self, f); why != "" {
			refused[k] = why
			continue
		}
		for sn := range p.lease.Subnets {
			if cur, ok := owner[sn]; !ok || k < cur {
				owner[sn] = k
			}
		}
	}
	// Subnets of other lengths that overlap (a /16 lease over /24 ones):
	// look each subnet's shorter prefixes up, at the lengths leases have.
	lengths := map[subnetLength]bool{}
	for sn := range owner {
		lengths[lengthOf(sn)] = true
	}
	for k, p := range all {
		if _, out := refused[k]; out && !contended[k] {
			continue
		}
		for sn := range p.lease.Subnets {
			if other := owner[sn]; other != k {
				refused[k] = fmt.Sprintf("its subnet %s is already leased by %s", sn, other)
				contended[k] = true
				break
			}
			for l := range lengths {
				if l.ipv6 != sn.Addr().Is6() || l.bits >= sn.Bits() {
					continue
				}
				parent := netip.PrefixFrom(sn.Addr(), l.bits).Masked()
				other, ok := owner[parent]
				if !ok || other == k {
					continue
				}
				// The smaller key keeps its subnet, as for equal ones.
				loser, winner, lost, kept := k, other, sn, parent
				if other > k {
					loser, winner, lost, kept = other, k, parent, sn
				}
				refused[loser] = fmt.Sprintf("its subnet %s overlaps %s, leased by %s", lost, kept, winner)
				contended[loser] = true
			}
		}
	}
	// VTEP MACs: the kernel holds one FDB entry per MAC, so of leases
	// claiming one MAC at different addresses only the oldest (then the
	// smallest key) is programmed; a lease copying another node's MAC
	// cannot take its traffic. A node's old and new lease share its MAC
	// at one address, which is fine.
	winner := map[vtep]string{}
	for k, p := range all {
		if _, out := refused[k]; out {
			continue
		}
		for _, c := range p.vteps {
			if cur, ok := winner[c.vtep]; !ok || older(all[k], k, all[cur], cur) {
				winner[c.vtep] = k
			}
		}
	}
	for k, p := range all {
		if _, out := refused[k]; out {
			continue
		}
		for _, c := range p.vteps {
			w := winner[c.vtep]
			if at := vtepAddr(all[w].lease, c.vtep.ipv6); w != k && at != c.addr {
				refused[k] = fmt.Sprintf("its VtepMAC %s is already used by %s at %s", c.vtep, w, at)
				contended[k] = true
				break
			}
		}
	}
	return refused, contended
}

// vtep is a VXLAN endpoint's (Ethernet) MAC, per family (each family has
// a device). A fixed-size key: the index of 10,000 of them allocates
// nothing per entry.
type vtep struct {
	mac  [6]byte
	ipv6 bool
}

func (v vtep) String() string { return net.HardwareAddr(v.mac[:]).String() }

// vtepClaim is a lease's VTEP MAC and the address it is reached at.
type vtepClaim struct {
	vtep
	addr netip.Addr
}

// vteps returns the VTEP MACs a vxlan lease claims.
func vteps(l subnet.Lease) []vtepClaim {
	if l.BackendType != "vxlan" {
		return nil
	}
	var out []vtepClaim
	for f := range l.Families {
		if mac := subnet.VtepMAC(f.BackendData); len(mac) == 6 {
			out = append(out, vtepClaim{vtep{[6]byte(mac), f.IPv6}, f.PublicIP})
		}
	}
	return out
}

// vtepAddr is l's public address of the family.
func vtepAddr(l subnet.Lease, ipv6 bool) netip.Addr { return l.Family(ipv6).PublicIP }

// older reports whether lease a (key ka) was written before b (key kb):
// by age where both are known, else by key.
func older(a *peer, ka string, b *peer, kb string) bool {
	if a.age != b.age && a.age != 0 && b.age != 0 {
		return a.age < b.age
	}
	return ka < kb
}

// subnetLength is a prefix length of one family.
type subnetLength struct {
	ipv6 bool
	bits int
}

func lengthOf(p netip.Prefix) subnetLength { return subnetLength{p.Addr().Is6(), p.Bits()} }

// fences are what no peer may claim besides this node's own lease.
type fences struct {
	underlay []netip.Prefix // the external interface's networks
	pods     []netip.Prefix // the pod networks: no peer is reached at a pod address
	// infra are addresses of the cluster's infrastructure (etcd) with what
	// they are: no peer is reached there.
	infra map[netip.Addr]string
}

// unfit says why l may not be programmed whatever other leases there are,
// or "": its subnet overlaps this node's or the underlay; or it asks to be
// reached at an address no peer can have (unspecified, loopback,
// multicast, a broadcast address, this node's own address, a pod's,
// etcd's) or, for vxlan, through a VTEP MAC no peer can have (all zeros,
// multicast or broadcast, this node's own).
func unfit(l, self subnet.Lease, fs fences) string {
	if why := overlaps(l, self, fs.underlay); why != "" {
		return why
	}
	for f := range l.Families {
		a := f.PublicIP
		if !a.IsValid() {
			continue // subnet.Config.CheckLease refuses a lease without one
		}
		switch {
		case a.IsUnspecified():
			return fmt.Sprintf("its public address %s is unspecified", a)
		case a.IsLoopback():
			return fmt.Sprintf("its public address %s is a loopback address", a)
		case a.IsMulticast():
			return fmt.Sprintf("its public address %s is a multicast address", a)
		case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return fmt.Sprintf("its public address %s is the broadcast address", a)
		case a == self.Family(f.IPv6).PublicIP:
			return fmt.Sprintf("its public address %s is this node's own", a)
		}
		if what, ok := fs.infra[a]; ok {
			return fmt.Sprintf("its public address %s is %s", a, what)
		}
		for _, u := range fs.underlay {
			if a == u.Addr() {
				return fmt.Sprintf("its public address %s is this node's own", a)
			}
			if a.Is4() && u.Addr().Is4() && u.Bits() < 31 && a == subnet.LastAddr(u) {
				return fmt.Sprintf("its public address %s is the broadcast address of the underlay network %s", a, u.Masked())
			}
		}
		for _, p := range fs.pods {
			if p.Contains(a) {
				return fmt.Sprintf("its public address %s is a pod address (inside the pod network %s)", a, p)
			}
		}
		if l.BackendType != "vxlan" {
			continue
		}
		if mac := subnet.VtepMAC(f.BackendData); mac != nil {
			switch {
			case isZero(mac):
				return fmt.Sprintf("its VtepMAC %s is all zeros", mac)
			case mac[0]&1 == 1:
				return fmt.Sprintf("its VtepMAC %s is a multicast or broadcast address", mac)
			case bytes.Equal(mac, subnet.VtepMAC(self.Family(f.IPv6).BackendData)):
				return fmt.Sprintf("its VtepMAC %s is this node's own", mac)
			}
		}
	}
	return ""
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// overlaps says why l's subnets may not be programmed: they overlap this
// node's or the underlay; or "".
func overlaps(l, self subnet.Lease, underlay []netip.Prefix) string {
	for sn := range l.Subnets {
		for mine := range self.Subnets {
			if mine.Overlaps(sn) {
				return fmt.Sprintf("its subnet %s overlaps this node's subnet %s", sn, mine)
			}
		}
		for _, u := range underlay {
			if u.Masked().Overlaps(sn) {
				return fmt.Sprintf("its subnet %s overlaps the underlay network %s", sn, u.Masked())
			}
		}
	}
	return ""
}
