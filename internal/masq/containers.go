package masq

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// ContainerTable is the nftables table the CNI plugin keeps for its ipMasq
// option: sets of container addresses whose traffic leaving the pod
// network is masqueraded.
const ContainerTable = "weft-cni"

func containerSet(t *nftables.Table, ipv6 bool) *nftables.Set {
	if ipv6 {
		return &nftables.Set{Table: t, Name: "containers6", KeyType: nftables.TypeIP6Addr}
	}
	return &nftables.Set{Table: t, Name: "containers4", KeyType: nftables.TypeIPAddr}
}

// EnsureContainerTable creates table weft-cni with its sets and rules if it
// does not exist. Callers serialise it (the plugin holds a file lock).
func EnsureContainerTable(conn *nftables.Conn, networks []netip.Prefix) error {
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("listing nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == ContainerTable {
			return nil
		}
	}
	t := conn.AddTable(&nftables.Table{Name: ContainerTable, Family: nftables.TableFamilyINet})
	accept := nftables.ChainPolicyAccept
	post := conn.AddChain(&nftables.Chain{
		Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
	})
	for _, n := range networks {
		set := containerSet(t, n.Addr().Is6())
		if err := conn.AddSet(set, nil); err != nil {
			return fmt.Errorf("adding set %s: %w", set.Name, err)
		}
		lookup := prefixMatch(n, src, expr.CmpOpEq)[:3] // nfproto check and load of saddr
		lookup = append(lookup, &expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID})
		conn.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: rule(lookup, notMatch(n, dst), notMatch(multicast(n), dst), []expr.Any{&expr.Masq{FullyRandom: true}})})
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("creating nftables table %s: %w", ContainerTable, err)
	}
	return nil
}

// AddContainer masquerades ip's traffic leaving the pod network.
func AddContainer(conn *nftables.Conn, ip netip.Addr) error {
	t := &nftables.Table{Name: ContainerTable, Family: nftables.TableFamilyINet}
	if err := conn.SetAddElements(containerSet(t, ip.Is6()), []nftables.SetElement{{Key: ip.AsSlice()}}); err != nil {
		return err
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("adding %s to table %s: %w", ip, ContainerTable, err)
	}
	return nil
}

// DelContainer stops masquerading ip; it is not an error if ip (or the
// table) is not there.
func DelContainer(conn *nftables.Conn, ip netip.Addr) error {
	t := &nftables.Table{Name: ContainerTable, Family: nftables.TableFamilyINet}
	if err := conn.SetDeleteElements(containerSet(t, ip.Is6()), []nftables.SetElement{{Key: ip.AsSlice()}}); err != nil {
		return err
	}
	if err := conn.Flush(); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("removing %s from table %s: %w", ip, ContainerTable, err)
	}
	return nil
}
