package daemon

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
// every node refuses the same one. refused maps a key to the reason.
func admit(all map[string]subnet.Lease, self subnet.Lease, underlay []netip.Prefix) (peers map[string]subnet.Lease, refused map[string]string) {
	// The smallest key claiming a subnet keeps it: the same choice on every
	// node, found in one pass without sorting.
	owner := make(map[netip.Prefix]string, len(all))
	for k, l := range all {
		for _, sn := range []netip.Prefix{l.Subnet, l.IPv6Subnet} {
			if sn.IsValid() {
				if cur, ok := owner[sn]; !ok || k < cur {
					owner[sn] = k
				}
			}
		}
	}
	peers = make(map[string]subnet.Lease, len(all))
	refused = map[string]string{}
	for k, l := range all {
		if k == self.Key() {
			continue
		}
		why := ""
		for _, sn := range []netip.Prefix{l.Subnet, l.IPv6Subnet} {
			if !sn.IsValid() || why != "" {
				continue
			}
			for _, mine := range []netip.Prefix{self.Subnet, self.IPv6Subnet} {
				if mine.IsValid() && mine.Overlaps(sn) {
					why = fmt.Sprintf("its subnet %s overlaps this node's subnet %s", sn, mine)
				}
			}
			for _, u := range underlay {
				if why == "" && u.Masked().Overlaps(sn) {
					why = fmt.Sprintf("its subnet %s overlaps the underlay network %s", sn, u.Masked())
				}
			}
			if other := owner[sn]; why == "" && other != k {
				why = fmt.Sprintf("its subnet %s is already leased by %s", sn, other)
			}
		}
		if why != "" {
			refused[k] = why
			continue
		}
		peers[k] = l
	}
	return peers, refused
}
