package reconcile

import (
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/subnet"
)

// admit chooses which leases of other nodes may be programmed: a lease
// whose subnet overlaps this node's subnet or the underlay (the external
// interface's networks), or a subnet another lease already claims, is
// refused, so no peer can route this node's pods away or hijack the
// underlay. Of two leases claiming one subnet, or overlapping subnets of
// different lengths, the smaller key keeps it, so every node refuses the
// same one. It returns the refused keys with the
// reason; contended marks those refused for a subnet another lease holds.
func admit(all map[string]*peer, self subnet.Lease, underlay []netip.Prefix) (refused map[string]string, contended map[string]bool) {
	// Leases that overlap this node or the underlay are out whatever the
	// others hold; of the rest, the smallest key claiming a subnet keeps
	// it: the same choice on every node, found in one pass without
	// sorting.
	refused, contended = map[string]string{}, map[string]bool{}
	owner := make(map[netip.Prefix]string, len(all))
	for k, p := range all {
		if why := overlaps(p.lease, self, underlay); why != "" {
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
	return refused, contended
}

// subnetLength is a prefix length of one family.
type subnetLength struct {
	ipv6 bool
	bits int
}

func lengthOf(p netip.Prefix) subnetLength { return subnetLength{p.Addr().Is6(), p.Bits()} }

// overlaps says why l may not be programmed whatever other leases there
// are (its subnet overlaps this node's or the underlay), or "".
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
