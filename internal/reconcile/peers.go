package reconcile

import (
	"net/netip"
	"slices"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/ratelog"
	"github.com/weft-net/weft/subnet"
)

// peerSet holds every valid lease of another node, as the store reports
// them, and which of them this node programs (admits, see admit). It is
// kept up to date incrementally: a batch of lease events costs time in
// proportion to its size, and yields the changes for the backends. Only
// when leases contend for one subnet, or this node's subnet or underlay
// changes, is admission worked out again for every lease. Used by the
// sync loop's goroutine only.
type peerSet struct {
	log      *logrus.Entry
	refusals ratelog.Limiter // a refusal is logged once per lease and reason
	self     subnet.Lease
	selfKey  string
	fences   fences

	all   map[string]*peer
	owner map[netip.Prefix]string // subnet -> the admitted lease's key
	macs  map[vtep]string         // VTEP MAC -> the admitted vxlan lease's key
	// lengths counts the admitted subnets per prefix length: a lease of a
	// length no other has may overlap them without being equal to one.
	lengths map[subnetLength]int
	// refused counts the leases not admitted, contended those of them
	// refused for a subnet another lease holds; counts the admitted ones
	// by state; byType the admitted ones by backend type.
	refused   int
	contended int
	counts    [backend.NumPeerStates]int
	byType    map[string]int

	// before holds, for each key changed since the last takeChanges, its
	// admitted peer before the first change (nil if none).
	before map[string]*peer
}

// peer is one lease. A new lease is a new peer value, so a change can
// refer to the old and the new one.
type peer struct {
	lease subnet.Lease
	// refused says why the lease is not programmed; "" if it is admitted.
	// contended: because another lease holds its subnet.
	refused   string
	contended bool
	// state is what its backend made of it (admitted peers only).
	state backend.PeerState
	// age orders leases by when they were written (subnet.Event.Age).
	age int64
	// vteps are the VTEP MACs it claims (vxlan), parsed once.
	vteps []vtepClaim
}

func (p *peer) admitted() bool { return p.refused == "" }

// change is one admitted peer before and after a batch: old is nil for a
// newly admitted peer, new is nil for one that left or is now refused.
type change struct {
	key      string
	old, new *peer
}

func newPeerSet(log *logrus.Entry, self subnet.Lease, f fences) *peerSet {
	return &peerSet{
		log: log, self: self, selfKey: self.Key(), fences: f,
		all: map[string]*peer{}, owner: map[netip.Prefix]string{}, macs: map[vtep]string{}, lengths: map[subnetLength]int{}, byType: map[string]int{},
		before: map[string]*peer{},
	}
}

// apply applies a batch of lease events; takeChanges says what they
// changed among the admitted peers.
func (s *peerSet) apply(batch []subnet.Event) {
	readmit := false
	for i := range batch {
		ev := &batch[i]
		key := ev.Lease.Key()
		if key == s.selfKey {
			continue // this node's own lease
		}
		old := s.all[key]
		if old != nil && ev.Type == subnet.Added && old.lease.Equal(&ev.Lease) {
			continue // written again as it was
		}
		s.touch(key, old)
		if old != nil {
			s.remove(key, old)
		}
		if ev.Type == subnet.Removed {
			// A refused lease may have waited for this one's subnet.
			readmit = readmit || s.contended > 0
			continue
		}
		p := &peer{lease: ev.Lease, age: ev.Age, vteps: vteps(ev.Lease)}
		s.all[key] = p
		if !s.admitOne(key, p) {
			readmit = true // contended: decided below, for every lease
		}
	}
	if readmit {
		s.admitAll()
	}
}

// setUnderlay records the external interface's networks and, when they
// changed, works out admission again.
func (s *peerSet) setUnderlay(underlay []netip.Prefix) {
	if !slices.Equal(underlay, s.fences.underlay) {
		s.fences.underlay = underlay
		s.admitAll()
	}
}

// touch records key's admitted peer p before its first change.
func (s *peerSet) touch(key string, p *peer) {
	if _, ok := s.before[key]; !ok {
		s.before[key] = admittedOrNil(p)
	}
}

// hasChanges reports whether takeChanges may have something to return.
func (s *peerSet) hasChanges() bool { return len(s.before) > 0 }

// takeChanges returns what changed among the admitted peers since it was
// last called.
func (s *peerSet) takeChanges() []change {
	var changes []change
	for key, old := range s.before {
		if cur := admittedOrNil(s.all[key]); old != cur {
			changes = append(changes, change{key: key, old: old, new: cur})
		}
	}
	if len(s.before) > 1024 {
		s.before = map[string]*peer{} // a map keeps its size: drop a big one
	} else {
		clear(s.before)
	}
	return changes
}

// admitOne admits p unless it overlaps this node or the underlay (then it
// is refused) or claims a subnet another admitted lease holds (then it
// returns false: admitAll decides).
func (s *peerSet) admitOne(key string, p *peer) bool {
	for sn := range p.lease.Subnets {
		if o, ok := s.owner[sn]; ok && o != key || s.otherLength(sn) {
			s.markRefused(p, "contended", true) // until admitAll decides
			return false
		}
	}
	for _, c := range p.vteps {
		if o, ok := s.macs[c.vtep]; ok && o != key && vtepAddr(s.all[o].lease, c.ipv6) != c.addr {
			s.markRefused(p, "contended", true) // until admitAll decides
			return false
		}
	}
	if why := unfit(p.lease, s.self, s.fences); why != "" {
		s.refuse(key, p, why, false)
		return true
	}
	s.admit(key, p)
	return true
}

// otherLength reports whether admitted subnets of sn's family have
// another length than sn: then only admitAll can tell whether they
// overlap.
func (s *peerSet) otherLength(sn netip.Prefix) bool {
	for l := range s.lengths {
		if l.ipv6 == sn.Addr().Is6() && l.bits != sn.Bits() {
			return true
		}
	}
	return false
}

// admitAll works out admission for every lease (see admit).
func (s *peerSet) admitAll() {
	refused, contended := admit(s.all, s.self, s.fences)
	clear(s.owner)
	clear(s.macs)
	clear(s.lengths)
	clear(s.byType)
	s.counts = [backend.NumPeerStates]int{}
	s.refused, s.contended = 0, 0
	for key, p := range s.all {
		why, isRefused := refused[key]
		if p.admitted() == isRefused { // admission flips
			s.touch(key, p)
		}
		if !isRefused {
			s.admit(key, p)
			continue
		}
		s.refuse(key, p, why, contended[key])
	}
}

func (s *peerSet) admit(key string, p *peer) {
	s.refusals.Forget(key)
	p.refused, p.contended = "", false
	for sn := range p.lease.Subnets {
		s.owner[sn] = key
		s.lengths[lengthOf(sn)]++
	}
	for _, c := range p.vteps {
		s.macs[c.vtep] = key
	}
	s.byType[p.lease.BackendType]++
	s.counts[p.state]++
}

// refuse records that p, the lease of key, is not admitted, and why, and
// says so once per reason.
func (s *peerSet) refuse(key string, p *peer, why string, contended bool) {
	s.refusals.Warn(s.log.WithField("peer", key), key, "refusing lease: "+why)
	s.markRefused(p, why, contended)
}

// markRefused records that p is not admitted, and why.
func (s *peerSet) markRefused(p *peer, why string, contended bool) {
	p.refused, p.contended = why, contended
	s.refused++
	if contended {
		s.contended++
	}
}

// remove forgets p, the lease of key.
func (s *peerSet) remove(key string, p *peer) {
	delete(s.all, key)
	s.refusals.Forget(key)
	if !p.admitted() {
		s.refused--
		if p.contended {
			s.contended--
		}
		return
	}
	for sn := range p.lease.Subnets {
		if s.owner[sn] == key {
			delete(s.owner, sn)
		}
		if s.lengths[lengthOf(sn)]--; s.lengths[lengthOf(sn)] <= 0 {
			delete(s.lengths, lengthOf(sn))
		}
	}
	for _, c := range p.vteps {
		if s.macs[c.vtep] == key {
			delete(s.macs, c.vtep)
		}
	}
	if s.byType[p.lease.BackendType]--; s.byType[p.lease.BackendType] == 0 {
		delete(s.byType, p.lease.BackendType)
	}
	s.counts[p.state]--
}

// setState records what p's backend made of it.
func (s *peerSet) setState(p *peer, st backend.PeerState) {
	if p.admitted() {
		s.counts[p.state]--
		s.counts[st]++
	}
	p.state = st
}

// admitted returns the admitted peers.
func (s *peerSet) admitted() []*peer {
	out := make([]*peer, 0, len(s.all)-s.refused)
	for _, p := range s.all {
		if p.admitted() {
			out = append(out, p)
		}
	}
	return out
}

// stats counts the admitted peers by state.
func (s *peerSet) stats() (known int, st backend.Stats) {
	return len(s.all) - s.refused, backend.StatsOf(s.counts)
}

func admittedOrNil(p *peer) *peer {
	if p == nil || !p.admitted() {
		return nil
	}
	return p
}
