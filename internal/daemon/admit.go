package daemon

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/weft-net/weft/subnet"
)

// admit chooses which leases of other nodes may be programmed: a lease
// whose subnet overlaps this node's subnet or the underlay (the external
// interface's networks), or a subnet another lease already claims, is
// refused, so no peer can route this node's pods away or hijack the
// underlay. Leases are considered in key order, so every node refuses the
// same one of two conflicting leases. refused maps a key to the reason.
func admit(all map[string]subnet.Lease, self subnet.Lease, underlay []netip.Prefix) (peers map[string]subnet.Lease, refused map[string]string) {
	keys := make([]string, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	peers = make(map[string]subnet.Lease, len(all))
	refused = map[string]string{}
	claimed := map[netip.Prefix]string{}
	for _, k := range keys {
		l := all[k]
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
			if other, ok := claimed[sn]; why == "" && ok {
				why = fmt.Sprintf("its subnet %s is already leased by %s", sn, other)
			}
		}
		if why != "" {
			refused[k] = why
			continue
		}
		for _, sn := range []netip.Prefix{l.Subnet, l.IPv6Subnet} {
			if sn.IsValid() {
				claimed[sn] = k
			}
		}
		peers[k] = l
	}
	return peers, refused
}
