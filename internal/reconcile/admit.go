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
// underlay. Of two leases claiming one subnet the smaller key keeps it, so
// every node refuses the same one. It returns the refused keys with the
// reason; contended marks those refused for a subnet another lease holds.
func admit(all map[string]*peer, self subnet.Lease, underlay []netip.Prefix) (refused map[string]string, contended map[string]bool) {
	// The smallest key claiming a subnet keeps it: the same choice on every
	// node, found in one pass without sorting.
	owner := make(map[netip.Prefix]string, len(all))
	for k, p := range all {
		for sn := range p.lease.Subnets {
			if cur, ok := owner[sn]; !ok || k < cur {
				owner[sn] = k
			}
		}
	}
	refused, contended = map[string]string{}, map[string]bool{}
	for k, p := range all {
		if why := overlaps(p.lease, self, underlay); why != "" {
			refused[k] = why
			continue
		}
		for sn := range p.lease.Subnets {
			if other := owner[sn]; other != k {
				refused[k] = fmt.Sprintf("its subnet %s is already leased by %s", sn, other)
				contended[k] = true
				break
			}
		}
	}
	return refused, contended
}

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
