package proxy

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/weft-net/weft/service"
)

// Family is one address family of the table: every map exists once per
// family, since a key holds an address of one.
type Family int

// Families.
const (
	IPv4 Family = iota
	IPv6
	numFamilies
)

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

func (f Family) String() string { return [...]string{"v4", "v6"}[f] }

// Target is an endpoint's address and port for one protocol.
type Target struct {
	Proto uint8
	Addr  netip.Addr
	Port  uint16
}

func (t Target) String() string { return netip.AddrPortFrom(t.Addr, t.Port).String() }

// Rule is one rule of a chain, as weft builds it: conditions that must all
// hold, then one action. The nft layer (nft.go) turns it into expressions;
// String renders it as nft would, for tests and for naming chains by
// their content.
type Rule struct {
	// Conditions; zero values are absent.
	SrcNot   []netip.Prefix // ip saddr != { ... }
	SrcIn    []netip.Prefix // ip saddr { ... }
	SrcLocal bool           // fib saddr type local
	SrcIs    netip.Addr     // ip saddr ADDR
	SrcInSet string         // ip saddr @SET

	// Actions; exactly one is set.
	Jump     string   // jump CHAIN
	Goto     string   // goto CHAIN
	DNAT     *Target  // meta l4proto P dnat to ADDR:PORT
	DNATAny  []Target // meta l4proto P dnat to numgen random mod N map { i : ADDR . PORT }
	GotoAny  []string // numgen random mod N vmap { i : goto CHAIN }
	Update   string   // update @SET { ip saddr }, then go on
	Drop     bool
	Rejected bool // reject (TCP: with a reset)
}

// canMatch reports whether r can match a packet of family f: a rule that
// wants the source in prefixes none of which is of f never does (a
// service's IPv6 VIP on a network whose pods are IPv4 only).
func (r Rule) canMatch(f Family) bool {
	if len(r.SrcIn) == 0 {
		return true
	}
	return slices.ContainsFunc(r.SrcIn, func(p netip.Prefix) bool { return familyOf(p.Addr()) == f })
}

func (r Rule) String() string {
	var b strings.Builder
	prefixes := func(ps []netip.Prefix) string {
		var s []string
		for _, p := range ps {
			s = append(s, p.String())
		}
		return "{ " + strings.Join(s, ", ") + " }"
	}
	if len(r.SrcNot) > 0 {
		fmt.Fprintf(&b, "saddr != %s ", prefixes(r.SrcNot))
	}
	if len(r.SrcIn) > 0 {
		fmt.Fprintf(&b, "saddr %s ", prefixes(r.SrcIn))
	}
	if r.SrcLocal {
		b.WriteString("fib saddr type local ")
	}
	if r.SrcIs.IsValid() {
		fmt.Fprintf(&b, "saddr %s ", r.SrcIs)
	}
	if r.SrcInSet != "" {
		fmt.Fprintf(&b, "saddr @%s ", r.SrcInSet)
	}
	switch {
	case r.Jump != "":
		fmt.Fprintf(&b, "jump %s", r.Jump)
	case r.Goto != "":
		fmt.Fprintf(&b, "goto %s", r.Goto)
	case r.DNAT != nil:
		fmt.Fprintf(&b, "meta l4proto %d dnat to %s", r.DNAT.Proto, r.DNAT)
	case len(r.DNATAny) > 0:
		var ts []string
		for i, t := range r.DNATAny {
			ts = append(ts, fmt.Sprintf("%d : %s", i, t))
		}
		fmt.Fprintf(&b, "meta l4proto %d dnat to numgen random mod %d map { %s }", r.DNATAny[0].Proto, len(r.DNATAny), strings.Join(ts, ", "))
	case len(r.GotoAny) > 0:
		var cs []string
		for i, c := range r.GotoAny {
			cs = append(cs, fmt.Sprintf("%d : goto %s", i, c))
		}
		fmt.Fprintf(&b, "numgen random mod %d vmap { %s }", len(r.GotoAny), strings.Join(cs, ", "))
	case r.Update != "":
		fmt.Fprintf(&b, "update @%s { ip saddr }", r.Update)
	case r.Drop:
		b.WriteString("drop")
	case r.Rejected:
		b.WriteString("reject")
	}
	return b.String()
}

// Chain is a chain of the table with its rules.
type Chain struct {
	Name   string
	Family Family
	Rules  []Rule
}

func (c *Chain) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "chain %s {\n", c.Name)
	for _, r := range c.Rules {
		fmt.Fprintf(&b, "\t%s\n", r)
	}
	b.WriteString("}\n")
	return b.String()
}

// Fixed chains of the table.
const (
	chainServices      = "services"
	chainMarkMasq      = "mark-for-masquerade"
	chainMasquerading  = "masquerading"
	chainNoEndpoints   = "no-endpoints"
	chainNatPrerouting = "nat-prerouting"
	chainNatOutput     = "nat-output"
	chainNatPostroute  = "nat-postrouting"
)

// fixedChains are the chains every table has, whatever its services.
var fixedChains = []string{chainServices, chainMarkMasq, chainMasquerading, chainNoEndpoints, chainNatPrerouting, chainNatOutput, chainNatPostroute}

// ServiceKey is the key of a service-ips map element.
type ServiceKey struct {
	VIP   netip.Addr
	Proto uint8
	Port  uint16
}

// NodePortKey is the key of a service-nodeports map element.
type NodePortKey struct {
	Proto uint8
	Port  uint16
}

// AffinitySet is a set of client addresses that recently went to one
// endpoint (session affinity).
type AffinitySet struct {
	Family  Family
	Timeout time.Duration
}

// State is everything the service table should hold besides its fixed
// part. It is built by Build and compared by the nft layer with what the
// kernel holds.
type State struct {
	// Entries are the stable chains the maps point to, by name, and the
	// chain each must go to. A stable chain is never rewritten in place:
	// a change points it to a new content chain (see nft.go).
	Entries map[string]string
	// Chains are the content chains, by name; a chain's name is derived
	// from its rules, so a chain of that name holds those rules.
	Chains map[string]*Chain
	// ServiceIPs and NodePorts are the map elements: a key and the stable
	// chain it goes to.
	ServiceIPs [numFamilies]map[ServiceKey]string
	NodePorts  [numFamilies]map[NodePortKey]string
	// Affinity are the affinity sets, by name.
	Affinity map[string]AffinitySet
	// ServiceNetworks are matched after the maps: a new connection to any
	// other address of them is rejected.
	ServiceNetworks []netip.Prefix
	// Stats count what the state programs.
	Services, Endpoints int
}

// Node is what Build needs to know of the node and the network.
type Node struct {
	// Subnets are this node's pod subnets: endpoints in them are local.
	Subnets []netip.Prefix
	// PodNetworks are the cluster's pod networks.
	PodNetworks []netip.Prefix
	// ServiceNetworks are the networks VIPs come from.
	ServiceNetworks []netip.Prefix
}

func (n *Node) local(a netip.Addr) bool {
	for _, s := range n.Subnets {
		if s.Contains(a) {
			return true
		}
	}
	return false
}

// Build works out what the table should hold for services (valid and
// admitted, see service.Admit) on node.
//
// Per service port and family: the service-ips element VIP . proto . port
// goes to the stable chain svc-NS/NAME/PROTO/PORT/FAM, which goes to a
// content chain that balances: with traffic policy Cluster it marks
// connections from outside the pod network for masquerade (the reply must
// come back through this node) and DNATs to a random ready endpoint; with
// Local it sends connections from this node and from pods to any ready
// endpoint and connections from outside only to ready endpoints on this
// node, unmasqueraded (the endpoint sees the client), dropping them when
// there is none. A node port element goes to ext-...: Cluster marks every
// connection for masquerade; Local is as for the VIP. Without ready
// endpoints the stable chain goes to no-endpoints, which rejects. With
// session affinity, the balancing goes through a chain per endpoint that
// records the client in a set with a timeout, and clients found in a set
// go to its endpoint.
func Build(services []*service.Service, node *Node) *State {
	parts := make([]*State, len(services))
	for i, s := range services {
		parts[i] = ServiceState(s, node)
	}
	return Merge(parts, node)
}

func newState(size int) *State {
	st := &State{
		Entries: make(map[string]string, size), Chains: make(map[string]*Chain, size), Affinity: map[string]AffinitySet{},
	}
	for f := range numFamilies {
		st.ServiceIPs[f] = make(map[ServiceKey]string, size)
		st.NodePorts[f] = map[NodePortKey]string{}
	}
	return st
}

// ServiceState is what the table should hold for one service on node
// (Build's part for s). It depends on nothing else, so the proxy keeps it
// while s and node stay the same.
func ServiceState(s *service.Service, node *Node) *State {
	st := newState(2 * len(s.Ports))
	st.Services = 1
	for _, e := range s.Endpoints {
		if e.IsReady() {
			st.Endpoints++
		}
	}
	for _, p := range s.Ports {
		for _, vip := range s.VIPs {
			st.addPort(s, p, vip, node)
		}
	}
	return st
}

// Merge joins the states of services (ServiceState) into the state of
// the table on node. The parts are not changed; the result shares their
// chains.
func Merge(parts []*State, node *Node) *State {
	size := 0
	for _, p := range parts {
		size += len(p.Chains)
	}
	st := newState(size)
	st.ServiceNetworks = node.ServiceNetworks
	for _, p := range parts {
		st.Services += p.Services
		st.Endpoints += p.Endpoints
		for k, v := range p.Entries {
			st.Entries[k] = v
		}
		for k, v := range p.Chains {
			st.Chains[k] = v
		}
		for k, v := range p.Affinity {
			st.Affinity[k] = v
		}
		for f := range numFamilies {
			for k, v := range p.ServiceIPs[f] {
				st.ServiceIPs[f][k] = v
			}
			for k, v := range p.NodePorts[f] {
				st.NodePorts[f][k] = v
			}
		}
	}
	return st
}

// addPort adds the chains and elements of one port of s on its VIP of one
// family.
func (st *State) addPort(s *service.Service, p service.Port, vip netip.Addr, node *Node) {
	fam := familyOf(vip)
	proto := p.Protocol.Number()
	base := fmt.Sprintf("%s/%s/%s/%d/%s", s.Namespace, s.Name, strings.ToLower(string(p.Protocol)), p.Port, fam)
	var all, local []netip.Addr
	for _, e := range s.Endpoints {
		if e.IsReady() && familyOf(e.Address) == fam {
			all = append(all, e.Address)
			if node.local(e.Address) {
				local = append(local, e.Address)
			}
		}
	}
	balanceAll := st.balance(s, p, proto, fam, base, all, "all")
	svc := "svc-" + base
	st.ServiceIPs[fam][ServiceKey{VIP: vip, Proto: proto, Port: p.Port}] = svc
	ext := ""
	if p.NodePort != 0 {
		ext = "ext-" + base
		st.NodePorts[fam][NodePortKey{Proto: proto, Port: p.NodePort}] = ext
	}
	if len(all) == 0 {
		st.Entries[svc] = chainNoEndpoints
		if ext != "" {
			st.Entries[ext] = chainNoEndpoints
		}
		return
	}
	pods := node.PodNetworks
	switch s.TrafficPolicy {
	case service.Local:
		localOrDrop := Rule{Drop: true}
		if len(local) > 0 {
			localOrDrop = Rule{Goto: st.balance(s, p, proto, fam, base, local, "local")}
		}
		// From this node and from pods: any endpoint; from outside: the
		// local ones, keeping the client's address.
		lb := st.content("lb", base, fam, []Rule{
			{SrcLocal: true, Goto: balanceAll},
			{SrcIn: pods, Goto: balanceAll},
			localOrDrop,
		})
		st.Entries[svc] = lb
		if ext != "" {
			st.Entries[ext] = st.content("ext", base, fam, []Rule{
				{SrcLocal: true, Jump: chainMarkMasq},
				{SrcLocal: true, Goto: balanceAll},
				{SrcIn: pods, Goto: balanceAll},
				localOrDrop,
			})
		}
	default: // Cluster
		st.Entries[svc] = st.content("lb", base, fam, []Rule{
			{SrcNot: pods, Jump: chainMarkMasq},
			{Goto: balanceAll},
		})
		if ext != "" {
			st.Entries[ext] = st.content("ext", base, fam, []Rule{
				{Jump: chainMarkMasq},
				{Goto: balanceAll},
			})
		}
	}
}

// balance returns a chain that DNATs to one of eps (sorted, non-empty) at
// random, with session affinity if s has it. which tells the chains of
// all endpoints from those of the local ones.
func (st *State) balance(s *service.Service, p service.Port, proto uint8, fam Family, base string, eps []netip.Addr, which string) string {
	if len(eps) == 0 {
		return ""
	}
	eps = slices.Clone(eps)
	slices.SortFunc(eps, netip.Addr.Compare)
	port := p.Target()
	if s.AffinityTimeoutSeconds == 0 {
		targets := make([]Target, len(eps))
		for i, a := range eps {
			targets[i] = Target{Proto: proto, Addr: a, Port: port}
		}
		rule := Rule{DNATAny: targets}
		if len(targets) == 1 {
			rule = Rule{DNAT: &targets[0]}
		}
		return st.content("to-"+which, base, fam, []Rule{rule})
	}
	var rules []Rule
	var targets []string
	for _, a := range eps {
		t := Target{Proto: proto, Addr: a, Port: port}
		set := setName("aff", base+"__"+t.String())
		st.Affinity[set] = AffinitySet{Family: fam, Timeout: s.Affinity()}
		ep := st.content("ep", base+"__"+t.String(), fam, []Rule{
			{Update: set},
			{DNAT: &t},
		})
		rules = append(rules, Rule{SrcInSet: set, Goto: ep})
		targets = append(targets, ep)
	}
	rules = append(rules, Rule{GotoAny: targets})
	return st.content("to-"+which, base, fam, rules)
}

// content adds a chain of rules named by kind, what it is for (base) and a
// hash of its rules, and returns its name: another chain of that name
// holds the same rules.
func (st *State) content(kind, base string, fam Family, rules []Rule) string {
	var text strings.Builder
	for _, r := range rules {
		text.WriteString(r.String())
		text.WriteByte('\n')
	}
	name := chainName(kind, text.String(), base)
	if _, ok := st.Chains[name]; !ok {
		st.Chains[name] = &Chain{Name: name, Family: fam, Rules: rules}
	}
	return name
}

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// chainName is KIND-HASH-BASE, cut to what the kernel takes (255 bytes).
func chainName(kind, content, base string) string {
	sum := sha256.Sum256([]byte(content + "\x00" + base))
	name := kind + "-" + b32.EncodeToString(sum[:])[:10] + "-" + base
	if len(name) > 255 {
		name = name[:255]
	}
	return name
}

// setName is a set's name, cut to what the kernel takes (255 bytes).
func setName(kind, base string) string {
	sum := sha256.Sum256([]byte(base))
	name := kind + "-" + b32.EncodeToString(sum[:])[:10] + "-" + base
	if len(name) > 255 {
		name = name[:255]
	}
	return name
}

// Describe renders the state as text, sorted: the fixed part is left out.
func (st *State) Describe() string {
	var b strings.Builder
	for f := range numFamilies {
		keys := slices.SortedFunc(maps.Keys(st.ServiceIPs[f]), func(a, b ServiceKey) int {
			if c := a.VIP.Compare(b.VIP); c != 0 {
				return c
			}
			if a.Proto != b.Proto {
				return int(a.Proto) - int(b.Proto)
			}
			return int(a.Port) - int(b.Port)
		})
		for _, k := range keys {
			fmt.Fprintf(&b, "service-ips-%s: %s . %d . %d : goto %s\n", f, k.VIP, k.Proto, k.Port, st.ServiceIPs[f][k])
		}
		nps := slices.SortedFunc(maps.Keys(st.NodePorts[f]), func(a, b NodePortKey) int { return int(a.Port) - int(b.Port) })
		for _, k := range nps {
			fmt.Fprintf(&b, "service-nodeports-%s: %d . %d : goto %s\n", f, k.Proto, k.Port, st.NodePorts[f][k])
		}
	}
	for _, name := range slices.Sorted(maps.Keys(st.Entries)) {
		fmt.Fprintf(&b, "chain %s { goto %s }\n", name, st.Entries[name])
	}
	for _, name := range slices.Sorted(maps.Keys(st.Chains)) {
		b.WriteString(st.Chains[name].String())
	}
	for _, name := range slices.Sorted(maps.Keys(st.Affinity)) {
		fmt.Fprintf(&b, "set %s { timeout %v }\n", name, st.Affinity[name].Timeout)
	}
	return b.String()
}
