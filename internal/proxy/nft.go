package proxy

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table weftd programs services into (inet
// family); it touches no other table.
const TableName = "weft-svc"

// MasqueradeMark is the packet mark bit that sends a connection through
// masquerade after DNAT (as kube-proxy's 0x4000, on a bit of its own).
const MasqueradeMark = 0x8000

// staleAfter is how long a chain nothing points to any more is kept
// before it is deleted: before kernel 6.2 a chain a deleted map element
// pointed to is not free at once (kube-proxy waits the same).
const staleAfter = time.Second

// maxElems is how many set elements go into one netlink message:
// google/nftables v0.3.0 wraps the 16-bit length of a longer list and the
// kernel silently keeps part of it.
const maxElems = 400

// Registers (the kernel's numbering): NFT_REG_1 holds 16 bytes, the same
// storage as the 32-bit registers 8 to 11.
const (
	reg1   = 1
	reg32  = 8 // NFT_REG32_00
	regVer = 0 // the verdict register
)

// Table programs the service table of one network namespace. Apply is
// add-only for changes of existing services: a stable chain that must go
// elsewhere gets a new goto inserted before its old one, so a transaction
// deletes nothing (on this kernel a transaction that deletes anything
// takes about 16 ms, one that only adds a fraction of a millisecond);
// Collect removes what nothing uses any more, later, in a transaction of
// its own. Not safe for concurrent use: the proxy's goroutine owns it.
type Table struct {
	conn func() (*nftables.Conn, error)
	t    *nftables.Table

	// What the table holds, as this process made or found it.
	synced  bool
	entries map[string]string // stable chain -> the chain its first rule goes to
	chains  map[string]bool   // content chains
	sets    map[string]bool   // affinity sets
	elems   [numFamilies]struct {
		svc map[ServiceKey]string
		np  map[NodePortKey]string
	}
	// Left to remove: chains nothing points to, since when; stable chains
	// with more than their first rule.
	stale     map[string]time.Time
	staleSets map[string]time.Time
	dirty     map[string]bool
	// fixed is what the fixed part was built for.
	fixed fixedPart
}

// fixedPart is what the table's fixed chains depend on.
type fixedPart struct {
	serviceNetworks string
	localSubnets    string
}

// NewTable returns a Table that opens its connections with conn
// (nftables.New with the namespace and socket buffers). It reads nothing
// until the first Sync.
func NewTable(conn func() (*nftables.Conn, error)) *Table {
	t := &Table{conn: conn, t: &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}}
	t.reset()
	return t
}

func (t *Table) reset() {
	t.synced = false
	t.entries, t.chains, t.sets = map[string]string{}, map[string]bool{}, map[string]bool{}
	for f := range numFamilies {
		t.elems[f].svc = map[ServiceKey]string{}
		t.elems[f].np = map[NodePortKey]string{}
	}
	t.stale, t.staleSets, t.dirty = map[string]time.Time{}, map[string]time.Time{}, map[string]bool{}
}

// BufferedConn opens nftables connections in the namespace fd (-1: the
// current one) with socket buffers large enough for a full sync of
// thousands of services in one transaction: google/nftables v0.3.0 sends a
// transaction in one message and asks for an acknowledgement of every part.
func BufferedConn(fd int) func() (*nftables.Conn, error) {
	sockopt := func(c *netlink.Conn) error {
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := rc.Control(func(s uintptr) {
			serr = errors.Join(
				unix.SetsockoptInt(int(s), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 64<<20),
				unix.SetsockoptInt(int(s), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20))
		}); err != nil {
			return err
		}
		return serr
	}
	return func() (*nftables.Conn, error) {
		opts := []nftables.ConnOption{nftables.WithSockOptions(sockopt)}
		if fd >= 0 {
			opts = append(opts, nftables.WithNetNSFd(fd))
		}
		return nftables.New(opts...)
	}
}

// Sync makes the table hold st: at the first call, and after a failed
// one, by reading what the kernel holds and rewriting the table's fixed
// part, its stable chains and maps in one transaction (a weftd that
// restarts finds its rules in place and replaces them atomically); then by
// changes only (Apply). It returns how many objects it changed.
func (t *Table) Sync(st *State, localSubnets []netip.Prefix) (int, error) {
	fixed := fixedPart{serviceNetworks: fmt.Sprint(st.ServiceNetworks), localSubnets: fmt.Sprint(localSubnets)}
	if !t.synced || fixed != t.fixed {
		n, err := t.full(st, localSubnets, fixed)
		if err != nil {
			t.reset()
		}
		return n, err
	}
	n, err := t.apply(st)
	if err != nil {
		t.reset() // the next Sync reads the kernel again
	}
	return n, err
}

// full rewrites the table from what the kernel holds.
func (t *Table) full(st *State, localSubnets []netip.Prefix, fixed fixedPart) (int, error) {
	c, err := t.conn()
	if err != nil {
		return 0, fmt.Errorf("opening nftables: %w", err)
	}
	t.reset()
	existing := map[string]bool{}
	if tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet); err == nil {
		for _, tb := range tables {
			if tb.Name == TableName {
				chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
				if err != nil {
					return 0, fmt.Errorf("listing the chains of %s: %w", TableName, err)
				}
				for _, ch := range chains {
					if ch.Table.Name == TableName {
						existing[ch.Name] = true
					}
				}
				sets, err := c.GetSets(t.t)
				if err != nil {
					return 0, fmt.Errorf("listing the sets of %s: %w", TableName, err)
				}
				for _, s := range sets {
					if !s.Anonymous && isAffinitySet(s.Name) {
						t.sets[s.Name] = true
					}
				}
			}
		}
	}
	c.AddTable(t.t)
	ops := 0
	// Fixed chains first (rules refer to them), then the maps.
	t.writeFixed(c, st.ServiceNetworks, localSubnets)
	ops++
	for _, s := range slices.Sorted(maps.Keys(st.Affinity)) {
		if !t.sets[s] {
			if err := c.AddSet(t.affinitySet(s, st.Affinity[s]), nil); err != nil {
				return 0, err
			}
			t.sets[s] = true
			ops++
		}
	}
	// Content chains are rewritten too: one left by an earlier run may
	// have been emptied on its way out.
	names := slices.Sorted(maps.Keys(st.Chains))
	if err := t.addChains(c, st, names, existing); err != nil {
		return 0, err
	}
	ops += len(names)
	for _, name := range slices.Sorted(maps.Keys(st.Entries)) {
		ch := &nftables.Chain{Table: t.t, Name: name}
		c.AddChain(ch)
		c.FlushChain(ch)
		if err := t.addGoto(c, name, st.Entries[name], false); err != nil {
			return 0, err
		}
		t.entries[name] = st.Entries[name]
		ops++
	}
	for f := range numFamilies {
		svc, np := serviceMap(t.t, Family(f)), nodePortMap(t.t, Family(f))
		c.FlushSet(svc)
		c.FlushSet(np)
		if err := t.addElems(c, Family(f), st); err != nil {
			return 0, err
		}
		ops += len(st.ServiceIPs[f]) + len(st.NodePorts[f])
	}
	now := time.Now()
	for name := range existing {
		// Anything else in weft's table goes: chains of services gone while
		// weftd was down, and whatever was added behind its back.
		if !slices.Contains(fixedChains, name) && !t.chains[name] && st.Entries[name] == "" && st.Chains[name] == nil {
			ch := &nftables.Chain{Table: t.t, Name: name}
			c.FlushChain(ch) // emptied now, deleted once nothing can point to it
			t.stale[name] = now
		}
	}
	for name := range t.sets {
		if _, ok := st.Affinity[name]; !ok {
			t.staleSets[name] = now
		}
	}
	if err := flush(c); err != nil {
		return 0, fmt.Errorf("writing nftables table %s: %w", TableName, err)
	}
	t.synced, t.fixed = true, fixed
	return ops, nil
}

// apply makes the changes from what the table holds to st, adding only,
// but for map elements of services that went away or changed, and a
// service that gains or loses a port (their map elements).
func (t *Table) apply(st *State) (int, error) {
	c, err := t.conn()
	if err != nil {
		return 0, fmt.Errorf("opening nftables: %w", err)
	}
	ops := 0
	for _, s := range slices.Sorted(maps.Keys(st.Affinity)) {
		if !t.sets[s] {
			if err := c.AddSet(t.affinitySet(s, st.Affinity[s]), nil); err != nil {
				return 0, err
			}
			t.sets[s] = true
			delete(t.staleSets, s)
			ops++
		}
	}
	var names []string
	for _, name := range slices.Sorted(maps.Keys(st.Chains)) {
		delete(t.stale, name)
		if !t.chains[name] {
			names = append(names, name)
		}
	}
	if err := t.addChains(c, st, names, nil); err != nil {
		return 0, err
	}
	ops += len(names)
	now := time.Now()
	for _, name := range slices.Sorted(maps.Keys(st.Entries)) {
		to := st.Entries[name]
		cur, ok := t.entries[name]
		switch {
		case !ok:
			ch := c.AddChain(&nftables.Chain{Table: t.t, Name: name})
			if _, wasStale := t.stale[name]; wasStale {
				c.FlushChain(ch) // a port gone and back before Collect
			}
			if err := t.addGoto(c, name, to, false); err != nil {
				return 0, err
			}
		case cur != to:
			// In front of the old goto, which is left for Collect.
			if err := t.addGoto(c, name, to, true); err != nil {
				return 0, err
			}
			t.dirty[name] = true
		default:
			continue
		}
		t.entries[name] = to
		delete(t.stale, name)
		ops++
	}
	for f := range numFamilies {
		n, err := t.diffElems(c, Family(f), st)
		if err != nil {
			return 0, err
		}
		ops += n
	}
	// What nothing points to any more: stable chains of ports gone, content
	// chains no stable chain or content chain uses.
	for name := range t.entries {
		if _, ok := st.Entries[name]; !ok {
			delete(t.entries, name)
			delete(t.dirty, name)
			t.stale[name] = now
		}
	}
	for name := range t.chains {
		if _, ok := st.Chains[name]; !ok {
			if _, pending := t.stale[name]; !pending {
				t.stale[name] = now
			}
		}
	}
	for name := range t.sets {
		if _, ok := st.Affinity[name]; !ok {
			if _, pending := t.staleSets[name]; !pending {
				t.staleSets[name] = now
			}
		}
	}
	if ops == 0 {
		return 0, nil
	}
	if err := flush(c); err != nil {
		return 0, fmt.Errorf("changing nftables table %s: %w", TableName, err)
	}
	return ops, nil
}

// Resync makes the next Sync read what the kernel holds and rewrite the
// table in one transaction, repairing anything changed behind weft's back.
func (t *Table) Resync() { t.synced = false }

// Check compares what the kernel holds with what the table should hold:
// its chains by name, and the number of elements of each map. It returns
// what differs ("" when nothing does). It reads names only, so it costs
// little next to rewriting; a rule changed inside a chain is caught by the
// periodic full rewrite instead.
func (t *Table) Check() (string, error) {
	if !t.synced {
		return "", nil
	}
	c, err := t.conn()
	if err != nil {
		return "", fmt.Errorf("opening nftables: %w", err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", fmt.Errorf("listing the chains of %s: %w", TableName, err)
	}
	have := map[string]bool{}
	for _, ch := range chains {
		if ch.Table.Name == TableName {
			have[ch.Name] = true
		}
	}
	want := map[string]bool{}
	for _, name := range fixedChains {
		want[name] = true
	}
	for name := range t.chains {
		want[name] = true
	}
	for name := range t.entries {
		want[name] = true
	}
	for name := range t.stale {
		want[name] = true
	}
	for name := range want {
		if !have[name] {
			return fmt.Sprintf("chain %s is missing", name), nil
		}
	}
	for name := range have {
		if !want[name] {
			return fmt.Sprintf("chain %s is not weft's", name), nil
		}
	}
	for f := range numFamilies {
		for _, m := range []struct {
			set  *nftables.Set
			want int
		}{
			{serviceMap(t.t, Family(f)), len(t.elems[f].svc)},
			{nodePortMap(t.t, Family(f)), len(t.elems[f].np)},
		} {
			elems, err := c.GetSetElements(m.set)
			if err != nil {
				return "", fmt.Errorf("reading map %s: %w", m.set.Name, err)
			}
			if len(elems) != m.want {
				return fmt.Sprintf("map %s has %d elements, not %d", m.set.Name, len(elems), m.want), nil
			}
		}
	}
	return "", nil
}

// Pending reports whether Collect has something to remove.
func (t *Table) Pending() bool {
	return len(t.stale) > 0 || len(t.staleSets) > 0 || len(t.dirty) > 0
}

// Collect removes, in one transaction, what nothing has pointed to for
// staleAfter: the old gotos of stable chains (each is rewritten with its
// current goto alone), unused chains and affinity sets.
func (t *Table) Collect() error {
	if !t.synced || !t.Pending() {
		return nil
	}
	c, err := t.conn()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	now := time.Now()
	var chains, sets []string
	for name, since := range t.stale {
		if now.Sub(since) >= staleAfter {
			chains = append(chains, name)
		}
	}
	for name, since := range t.staleSets {
		if now.Sub(since) >= staleAfter {
			sets = append(sets, name)
		}
	}
	dirty := slices.Collect(maps.Keys(t.dirty))
	for _, name := range dirty {
		ch := &nftables.Chain{Table: t.t, Name: name}
		c.FlushChain(ch)
		if err := t.addGoto(c, name, t.entries[name], false); err != nil {
			return err
		}
	}
	// Unused chains may point to each other: empty them all, then delete.
	for _, name := range chains {
		c.FlushChain(&nftables.Chain{Table: t.t, Name: name})
	}
	for _, name := range chains {
		c.DelChain(&nftables.Chain{Table: t.t, Name: name})
	}
	for _, name := range sets {
		c.DelSet(&nftables.Set{Table: t.t, Name: name})
	}
	if len(dirty)+len(chains)+len(sets) == 0 {
		return nil
	}
	if err := flush(c); err != nil {
		t.reset()
		return fmt.Errorf("cleaning up nftables table %s: %w", TableName, err)
	}
	clear(t.dirty)
	for _, name := range chains {
		delete(t.stale, name)
		delete(t.chains, name)
	}
	for _, name := range sets {
		delete(t.staleSets, name)
		delete(t.sets, name)
	}
	return nil
}

// Remove deletes the table (when services are turned off).
func (t *Table) Remove() error {
	c, err := t.conn()
	if err != nil {
		return err
	}
	c.DelTable(t.t)
	if err := flush(c); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("deleting nftables table %s: %w", TableName, err)
	}
	t.reset()
	return nil
}

func flush(c *nftables.Conn) error {
	err := c.Flush()
	if errors.Is(err, syscall.ENOBUFS) {
		// The kernel applied the transaction and dropped acknowledgements:
		// what it holds is unknown; the caller reads it again.
		return fmt.Errorf("the kernel's answer did not fit the socket (ENOBUFS); the table will be read again: %w", err)
	}
	return err
}

func isAffinitySet(name string) bool { return len(name) > 4 && name[:4] == "aff-" }

func (t *Table) affinitySet(name string, a AffinitySet) *nftables.Set {
	kt := nftables.TypeIPAddr
	if a.Family == IPv6 {
		kt = nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: t.t, Name: name, KeyType: kt, HasTimeout: true, Timeout: a.Timeout, Dynamic: true}
}

// addChains adds the content chains names of st with their rules: all
// chains first, since their rules go to each other. Those in flush exist
// already and are emptied first.
func (t *Table) addChains(c *nftables.Conn, st *State, names []string, flush map[string]bool) error {
	for _, name := range names {
		ch := c.AddChain(&nftables.Chain{Table: t.t, Name: name})
		if flush[name] {
			c.FlushChain(ch)
		}
	}
	for _, name := range names {
		ch := st.Chains[name]
		for _, r := range ch.Rules {
			if !r.canMatch(ch.Family) {
				continue
			}
			exprs, err := t.exprs(c, ch.Family, r)
			if err != nil {
				return fmt.Errorf("chain %s: %w", ch.Name, err)
			}
			c.AddRule(&nftables.Rule{Table: t.t, Chain: &nftables.Chain{Table: t.t, Name: name}, Exprs: exprs})
		}
		t.chains[name] = true
	}
	return nil
}

// addGoto adds "goto to" to chain, at its head with first.
func (t *Table) addGoto(c *nftables.Conn, chain, to string, first bool) error {
	r := &nftables.Rule{Table: t.t, Chain: &nftables.Chain{Table: t.t, Name: chain}, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictGoto, Chain: to}}}
	if first {
		c.InsertRule(r)
	} else {
		c.AddRule(r)
	}
	return nil
}

func serviceMap(tb *nftables.Table, f Family) *nftables.Set {
	return &nftables.Set{Table: tb, Name: "service-ips-" + f.String(), IsMap: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(addrType(f), nftables.TypeInetProto, nftables.TypeInetService), DataType: nftables.TypeVerdict}
}

func nodePortMap(tb *nftables.Table, f Family) *nftables.Set {
	return &nftables.Set{Table: tb, Name: "service-nodeports-" + f.String(), IsMap: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService), DataType: nftables.TypeVerdict}
}

func addrType(f Family) nftables.SetDatatype {
	if f == IPv6 {
		return nftables.TypeIP6Addr
	}
	return nftables.TypeIPAddr
}

func serviceKey(k ServiceKey) []byte {
	b := append([]byte{}, k.VIP.AsSlice()...)
	b = append(b, k.Proto, 0, 0, 0)
	return append(b, byte(k.Port>>8), byte(k.Port), 0, 0)
}

func nodePortKey(k NodePortKey) []byte {
	return []byte{k.Proto, 0, 0, 0, byte(k.Port >> 8), byte(k.Port), 0, 0}
}

func gotoVerdict(chain string) *expr.Verdict {
	return &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain}
}

// addElems adds every element of st's maps of family f.
func (t *Table) addElems(c *nftables.Conn, f Family, st *State) error {
	var svc, np []nftables.SetElement
	for _, k := range slices.SortedFunc(maps.Keys(st.ServiceIPs[f]), cmpServiceKey) {
		svc = append(svc, nftables.SetElement{Key: serviceKey(k), VerdictData: gotoVerdict(st.ServiceIPs[f][k])})
		t.elems[f].svc[k] = st.ServiceIPs[f][k]
	}
	for _, k := range slices.SortedFunc(maps.Keys(st.NodePorts[f]), cmpNodePortKey) {
		np = append(np, nftables.SetElement{Key: nodePortKey(k), VerdictData: gotoVerdict(st.NodePorts[f][k])})
		t.elems[f].np[k] = st.NodePorts[f][k]
	}
	if err := addInChunks(c, serviceMap(t.t, f), svc); err != nil {
		return err
	}
	return addInChunks(c, nodePortMap(t.t, f), np)
}

// diffElems changes the elements of family f's maps to st's.
func (t *Table) diffElems(c *nftables.Conn, f Family, st *State) (int, error) {
	ops := 0
	var add, del []nftables.SetElement
	for k, to := range st.ServiceIPs[f] {
		cur, ok := t.elems[f].svc[k]
		if ok && cur == to {
			continue
		}
		if ok {
			del = append(del, nftables.SetElement{Key: serviceKey(k)})
		}
		add = append(add, nftables.SetElement{Key: serviceKey(k), VerdictData: gotoVerdict(to)})
		t.elems[f].svc[k] = to
	}
	for k := range t.elems[f].svc {
		if _, ok := st.ServiceIPs[f][k]; !ok {
			del = append(del, nftables.SetElement{Key: serviceKey(k)})
			delete(t.elems[f].svc, k)
		}
	}
	m := serviceMap(t.t, f)
	if err := delInChunks(c, m, del); err != nil {
		return 0, err
	}
	if err := addInChunks(c, m, add); err != nil {
		return 0, err
	}
	ops += len(add) + len(del)
	add, del = nil, nil
	for k, to := range st.NodePorts[f] {
		cur, ok := t.elems[f].np[k]
		if ok && cur == to {
			continue
		}
		if ok {
			del = append(del, nftables.SetElement{Key: nodePortKey(k)})
		}
		add = append(add, nftables.SetElement{Key: nodePortKey(k), VerdictData: gotoVerdict(to)})
		t.elems[f].np[k] = to
	}
	for k := range t.elems[f].np {
		if _, ok := st.NodePorts[f][k]; !ok {
			del = append(del, nftables.SetElement{Key: nodePortKey(k)})
			delete(t.elems[f].np, k)
		}
	}
	m = nodePortMap(t.t, f)
	if err := delInChunks(c, m, del); err != nil {
		return 0, err
	}
	if err := addInChunks(c, m, add); err != nil {
		return 0, err
	}
	return ops + len(add) + len(del), nil
}

func addInChunks(c *nftables.Conn, s *nftables.Set, elems []nftables.SetElement) error {
	for len(elems) > 0 {
		n := min(len(elems), maxElems)
		if err := c.SetAddElements(s, elems[:n]); err != nil {
			return fmt.Errorf("adding to %s: %w", s.Name, err)
		}
		elems = elems[n:]
	}
	return nil
}

func delInChunks(c *nftables.Conn, s *nftables.Set, elems []nftables.SetElement) error {
	for len(elems) > 0 {
		n := min(len(elems), maxElems)
		if err := c.SetDeleteElements(s, elems[:n]); err != nil {
			return fmt.Errorf("deleting from %s: %w", s.Name, err)
		}
		elems = elems[n:]
	}
	return nil
}

func cmpServiceKey(a, b ServiceKey) int {
	if c := a.VIP.Compare(b.VIP); c != 0 {
		return c
	}
	if a.Proto != b.Proto {
		return int(a.Proto) - int(b.Proto)
	}
	return int(a.Port) - int(b.Port)
}

func cmpNodePortKey(a, b NodePortKey) int {
	if a.Proto != b.Proto {
		return int(a.Proto) - int(b.Proto)
	}
	return int(a.Port) - int(b.Port)
}

// writeFixed (re)writes the fixed chains and creates the maps:
//
//	nat-prerouting, nat-output (dstnat): jump services
//	nat-postrouting (srcnat):            jump masquerading
//	services:       ip daddr . meta l4proto . th dport vmap @service-ips-FAM
//	                fib daddr type local ip daddr != loopback meta l4proto . th dport vmap @service-nodeports-FAM
//	                ip daddr <service network> reject      (no such service or port)
//	mark-for-masquerade:  meta mark set meta mark | MARK
//	masquerading:   meta mark & MARK == MARK meta mark set meta mark ^ MARK masquerade
//	                ct status dnat ip saddr <local subnet> ip daddr <local subnet> masquerade
//	no-endpoints:   meta l4proto tcp reject with tcp reset; reject
//
// The second masquerading rule is for a pod reaching a service whose
// endpoint is a pod of the same node: its reply would cross the bridge
// without coming back through the node's NAT.
func (t *Table) writeFixed(c *nftables.Conn, serviceNetworks, localSubnets []netip.Prefix) {
	accept := nftables.ChainPolicyAccept
	base := func(name string, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		ch := c.AddChain(&nftables.Chain{Table: t.t, Name: name, Type: nftables.ChainTypeNAT, Hooknum: hook, Priority: prio, Policy: &accept})
		c.FlushChain(ch)
		return ch
	}
	regular := func(name string) *nftables.Chain {
		ch := c.AddChain(&nftables.Chain{Table: t.t, Name: name})
		c.FlushChain(ch)
		return ch
	}
	// Regular chains before the rules that jump to them.
	services := regular(chainServices)
	markMasq := regular(chainMarkMasq)
	masquerading := regular(chainMasquerading)
	noEndpoints := regular(chainNoEndpoints)
	for f := range numFamilies {
		c.AddSet(serviceMap(t.t, Family(f)), nil)
		c.AddSet(nodePortMap(t.t, Family(f)), nil)
	}
	pre := base(chainNatPrerouting, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
	out := base(chainNatOutput, nftables.ChainHookOutput, nftables.ChainPriorityNATDest)
	post := base(chainNatPostroute, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	rule := func(ch *nftables.Chain, parts ...[]expr.Any) {
		var all []expr.Any
		for _, p := range parts {
			all = append(all, p...)
		}
		c.AddRule(&nftables.Rule{Table: t.t, Chain: ch, Exprs: all})
	}
	verdict := func(k expr.VerdictKind, chain string) []expr.Any {
		return []expr.Any{&expr.Verdict{Kind: k, Chain: chain}}
	}
	rule(pre, verdict(expr.VerdictJump, chainServices))
	rule(out, verdict(expr.VerdictJump, chainServices))
	rule(post, verdict(expr.VerdictJump, chainMasquerading))
	for f := range numFamilies {
		fam := Family(f)
		rule(services, daddrProtoPort(fam), []expr.Any{&expr.Lookup{SourceRegister: reg1, SetName: "service-ips-" + fam.String(), IsDestRegSet: true, DestRegister: regVer}})
		rule(services, nfproto(fam),
			[]expr.Any{&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true}, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)}},
			prefixMatch(loopback(fam), true, expr.CmpOpNeq),
			protoPort(reg32),
			[]expr.Any{&expr.Lookup{SourceRegister: reg32, SetName: "service-nodeports-" + fam.String(), IsDestRegSet: true, DestRegister: regVer}})
	}
	for _, n := range serviceNetworks {
		for _, r := range rejectRules() {
			rule(services, prefixMatch(n, true, expr.CmpOpEq), r)
		}
	}
	bit := binaryutil.NativeEndian.PutUint32(MasqueradeMark)
	rule(markMasq, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^uint32(MasqueradeMark)), Xor: bit},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	})
	rule(masquerading, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: bit, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: bit},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(^uint32(0)), Xor: bit},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
		&expr.Masq{FullyRandom: true},
	})
	for _, n := range localSubnets {
		rule(masquerading, []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATUS, Register: reg1},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
		}, prefixMatch(n, false, expr.CmpOpEq), prefixMatch(n, true, expr.CmpOpEq), []expr.Any{&expr.Masq{FullyRandom: true}})
	}
	for _, r := range rejectRules() {
		rule(noEndpoints, r)
	}
}

// ipsDstNAT is the conntrack status bit of a DNATed connection.
const ipsDstNAT = 1 << 5

func loopback(f Family) netip.Prefix {
	if f == IPv6 {
		return netip.MustParsePrefix("::1/128")
	}
	return netip.MustParsePrefix("127.0.0.0/8")
}

// rejectRules reject TCP with a reset (an ICMP error would be rate
// limited, and some connections would wait for a timeout) and everything
// else with an ICMP port unreachable.
func rejectRules() [][]expr.Any {
	return [][]expr.Any{
		{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
		},
		{&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}},
	}
}

// exprs turns a rule of family f into expressions. Anonymous maps it needs
// are added to c.
func (t *Table) exprs(c *nftables.Conn, f Family, r Rule) ([]expr.Any, error) {
	var e []expr.Any
	add := func(parts ...[]expr.Any) {
		for _, p := range parts {
			e = append(e, p...)
		}
	}
	for _, p := range r.SrcNot {
		if familyOf(p.Addr()) == f {
			add(prefixMatch(p, false, expr.CmpOpNeq))
		}
	}
	for _, p := range r.SrcIn {
		if familyOf(p.Addr()) == f {
			add(prefixMatch(p, false, expr.CmpOpEq))
		}
	}
	if r.SrcLocal {
		add([]expr.Any{&expr.Fib{Register: reg1, FlagSADDR: true, ResultADDRTYPE: true}, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)}})
	}
	if r.SrcIs.IsValid() {
		add(prefixMatch(netip.PrefixFrom(r.SrcIs, r.SrcIs.BitLen()), false, expr.CmpOpEq))
	}
	if r.SrcInSet != "" {
		add(nfproto(f), []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: saddrOffset(f), Len: addrLen(f)},
			&expr.Lookup{SourceRegister: reg1, SetName: r.SrcInSet},
		})
	}
	switch {
	case r.Jump != "":
		add([]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: r.Jump}})
	case r.Goto != "":
		add([]expr.Any{&expr.Verdict{Kind: expr.VerdictGoto, Chain: r.Goto}})
	case r.DNAT != nil:
		add(dnat(f, r.DNAT))
	case len(r.DNATAny) > 0:
		m := &nftables.Set{Table: t.t, Anonymous: true, Constant: true, IsMap: true, KeyType: nftables.TypeInteger,
			DataType: nftables.MustConcatSetType(addrType(f), nftables.TypeInetService)}
		var elems []nftables.SetElement
		for i, tg := range r.DNATAny {
			val := append([]byte{}, tg.Addr.AsSlice()...)
			val = append(val, byte(tg.Port>>8), byte(tg.Port), 0, 0)
			elems = append(elems, nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(i)), Val: val})
		}
		if err := c.AddSet(m, elems); err != nil {
			return nil, err
		}
		add([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{r.DNATAny[0].Proto}},
			&expr.Numgen{Register: reg1, Modulus: uint32(len(r.DNATAny)), Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: reg1, SetName: m.Name, SetID: m.ID, IsDestRegSet: true, DestRegister: reg1},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfprotoNumber(f), RegAddrMin: reg1, RegProtoMin: uint32(reg32 + addrLen(f)/4), Specified: true},
		})
	case len(r.GotoAny) > 0:
		m := &nftables.Set{Table: t.t, Anonymous: true, Constant: true, IsMap: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
		var elems []nftables.SetElement
		for i, ch := range r.GotoAny {
			elems = append(elems, nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(i)), VerdictData: gotoVerdict(ch)})
		}
		if err := c.AddSet(m, elems); err != nil {
			return nil, err
		}
		add([]expr.Any{
			&expr.Numgen{Register: reg1, Modulus: uint32(len(r.GotoAny)), Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: reg1, SetName: m.Name, SetID: m.ID, IsDestRegSet: true, DestRegister: regVer},
		})
	case r.Update != "":
		add(nfproto(f), []expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: saddrOffset(f), Len: addrLen(f)},
			&expr.Dynset{SrcRegKey: reg1, SetName: r.Update, Operation: unix.NFT_DYNSET_OP_UPDATE},
		})
	case r.Drop:
		add([]expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}})
	case r.Rejected:
		add(rejectRules()[1])
	default:
		return nil, fmt.Errorf("rule %q has no action", r)
	}
	return e, nil
}

func dnat(f Family, tg *Target) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{tg.Proto}},
		&expr.Immediate{Register: reg1, Data: tg.Addr.AsSlice()},
		&expr.Immediate{Register: reg32 + 4, Data: binaryutil.BigEndian.PutUint16(tg.Port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfprotoNumber(f), RegAddrMin: reg1, RegProtoMin: reg32 + 4, Specified: true},
	}
}

func nfprotoNumber(f Family) uint32 {
	if f == IPv6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

func nfproto(f Family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{byte(nfprotoNumber(f))}},
	}
}

func addrLen(f Family) uint32 {
	if f == IPv6 {
		return 16
	}
	return 4
}

func saddrOffset(f Family) uint32 {
	if f == IPv6 {
		return 8
	}
	return 12
}

// daddrProtoPort loads "daddr . l4proto . dport" into consecutive
// registers from reg1.
func daddrProtoPort(f Family) []expr.Any {
	e := nfproto(f)
	e = append(e, &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: saddrOffset(f) + addrLen(f), Len: addrLen(f)})
	return append(e, protoPort(reg32+addrLen(f)/4)...)
}

// protoPort loads "l4proto . dport" into the 32-bit registers from reg.
func protoPort(reg uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
		&expr.Payload{DestRegister: reg + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// prefixMatch is "ip[6] saddr|daddr [!=] n", with the family check.
func prefixMatch(n netip.Prefix, dst bool, op expr.CmpOp) []expr.Any {
	f := familyOf(n.Addr())
	off := saddrOffset(f)
	if dst {
		off += addrLen(f)
	}
	size := addrLen(f)
	mask := make([]byte, size)
	for i := 0; i < n.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return append(nfproto(f),
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: size, Mask: mask, Xor: make([]byte, size)},
		&expr.Cmp{Op: op, Register: reg1, Data: n.Masked().Addr().AsSlice()},
	)
}
