// Package masq installs weft's nftables table "weft": masquerade for
// traffic leaving the pod network, and forward-accept for pod traffic.
package masq

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table weft owns.
const TableName = "weft"

// Rules describes what the table holds.
type Rules struct {
	// Networks are the pod networks (one per address family).
	Networks []netip.Prefix
	// Masquerade enables source NAT for pod traffic leaving the pod
	// networks (--ip-masq). Pod-to-pod traffic is never masqueraded.
	Masquerade bool
}

// Apply replaces the table with one built from r in a single nftables
// transaction: packets see the old rules or the new ones, never none. conn
// selects the network namespace (nftables.New(nftables.WithNetNSFd(fd))).
// Apply is idempotent.
func Apply(conn *nftables.Conn, r Rules) error {
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	// Adding before deleting makes the delete succeed whether or not the
	// table existed; the second add starts it afresh.
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)

	accept := nftables.ChainPolicyAccept
	fwd := conn.AddChain(&nftables.Chain{
		Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	for _, n := range r.Networks {
		conn.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: rule(match(n, src), verdict(expr.VerdictAccept))})
		conn.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: rule(match(n, dst), verdict(expr.VerdictAccept))})
	}
	if r.Masquerade {
		post := conn.AddChain(&nftables.Chain{
			Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
		})
		for _, n := range r.Networks {
			// Pod to pod: keep the source.
			conn.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: rule(match(n, src), match(n, dst), verdict(expr.VerdictReturn))})
			// Pod to the outside, except multicast: masquerade.
			conn.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: rule(match(n, src), notMatch(multicast(n), dst), []expr.Any{&expr.Masq{FullyRandom: true}})})
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("replacing nftables table %s: %w", TableName, err)
	}
	return nil
}

// Remove deletes the table if it exists.
func Remove(conn *nftables.Conn) error {
	conn.DelTable(&nftables.Table{Name: TableName, Family: nftables.TableFamilyINet})
	if err := conn.Flush(); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("deleting nftables table %s: %w", TableName, err)
	}
	return nil
}

type direction int

const (
	src direction = iota
	dst
)

func multicast(n netip.Prefix) netip.Prefix {
	if n.Addr().Is4() {
		return netip.MustParsePrefix("224.0.0.0/4")
	}
	return netip.MustParsePrefix("ff00::/8")
}

func rule(parts ...[]expr.Any) []expr.Any {
	var all []expr.Any
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

func match(n netip.Prefix, d direction) []expr.Any    { return prefixMatch(n, d, expr.CmpOpEq) }
func notMatch(n netip.Prefix, d direction) []expr.Any { return prefixMatch(n, d, expr.CmpOpNeq) }

// prefixMatch is "ip[6] saddr|daddr [!=] n" in the inet family.
func prefixMatch(n netip.Prefix, d direction, op expr.CmpOp) []expr.Any {
	proto, offset := byte(unix.NFPROTO_IPV4), uint32(12) // IPv4 saddr
	if n.Addr().Is6() {
		proto, offset = unix.NFPROTO_IPV6, 8
	}
	size := uint32(n.Addr().BitLen() / 8)
	if d == dst {
		offset += size
	}
	mask := make([]byte, size)
	for i := 0; i < n.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: mask, Xor: make([]byte, size)},
		&expr.Cmp{Op: op, Register: 1, Data: n.Masked().Addr().AsSlice()},
	}
}
