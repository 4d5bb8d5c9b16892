package reconcile

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/weft-net/weft/subnet"
)

func added(ls ...subnet.Lease) []subnet.Event {
	var evs []subnet.Event
	for _, l := range ls {
		evs = append(evs, subnet.Event{Type: subnet.Added, Lease: l})
	}
	return evs
}

func removed(ls ...subnet.Lease) []subnet.Event {
	var evs []subnet.Event
	for _, l := range ls {
		evs = append(evs, subnet.Event{Type: subnet.Removed, Lease: l})
	}
	return evs
}

// describe renders changes as "key: old -> new" with the public IPs.
func describe(changes []change) []string {
	ip := func(p *peer) string {
		if p == nil {
			return "-"
		}
		return p.lease.PublicIP.String()
	}
	var out []string
	for _, c := range changes {
		out = append(out, c.key+": "+ip(c.old)+" -> "+ip(c.new))
	}
	slices.Sort(out)
	return out
}

func TestPeerSetReportsChangesSinceLastTaken(t *testing.T) {
	logger, _ := logtest.NewNullLogger()
	s := newPeerSet(logrus.NewEntry(logger), lease(1), fences{})
	s.apply(added(lease(1), lease(2), lease(3)))
	if got, want := describe(s.takeChanges()), []string{"100.96.2.0-24: - -> 198.18.0.2", "100.96.3.0-24: - -> 198.18.0.3"}; !slices.Equal(got, want) {
		t.Errorf("first batch: %v, want %v", got, want)
	}
	// Several batches between syncs fold into one change per key; a lease
	// that came and went is no change at all.
	moved := lease(2)
	moved.PublicIP = netip.MustParseAddr("198.18.9.2")
	s.apply(added(moved))
	s.apply(removed(lease(3)))
	s.apply(added(lease(4)))
	s.apply(removed(lease(4)))
	if got, want := describe(s.takeChanges()), []string{"100.96.2.0-24: 198.18.0.2 -> 198.18.9.2", "100.96.3.0-24: 198.18.0.3 -> -"}; !slices.Equal(got, want) {
		t.Errorf("later batches: %v, want %v", got, want)
	}
	if got := s.takeChanges(); len(got) != 0 {
		t.Errorf("changes taken twice: %v", describe(got))
	}
	if known, _ := s.stats(); known != 1 {
		t.Errorf("known = %d, want 1", known)
	}
}

func TestPeerSetHandsAContendedSubnetOverWhenItsHolderLeaves(t *testing.T) {
	logger, hook := logtest.NewNullLogger()
	s := newPeerSet(logrus.NewEntry(logger), lease(1), fences{})
	holder := lease(2)
	holder.IPv6Subnet = netip.MustParsePrefix("fd96:0:0:2::/64")
	rival := lease(2) // same IPv4 subnet, another IPv6 one: a larger key
	rival.IPv6Subnet = netip.MustParsePrefix("fd96:0:0:9::/64")
	rival.PublicIP = netip.MustParseAddr("198.18.9.9")
	s.apply(added(rival))
	s.apply(added(holder)) // the smaller key takes the subnet from the rival
	if got, want := describe(s.takeChanges()), []string{holder.Key() + ": - -> 198.18.0.2"}; !slices.Equal(got, want) {
		t.Errorf("changes: %v, want %v", got, want)
	}
	refusals := 0
	for _, e := range hook.AllEntries() {
		if strings.Contains(e.Message, "is already leased by "+holder.Key()) {
			refusals++
		}
	}
	if refusals != 1 {
		t.Errorf("the rival's refusal was logged %d times, want once", refusals)
	}
	s.apply(removed(holder))
	if got, want := describe(s.takeChanges()), []string{holder.Key() + ": 198.18.0.2 -> -", rival.Key() + ": - -> 198.18.9.9"}; !slices.Equal(got, want) {
		t.Errorf("after the holder left: %v, want %v", got, want)
	}
}

func TestPeerSetReadmitsWhenTheUnderlayChanges(t *testing.T) {
	logger, _ := logtest.NewNullLogger()
	s := newPeerSet(logrus.NewEntry(logger), lease(1), fences{})
	s.apply(added(lease(2), lease(3)))
	s.takeChanges()
	s.setUnderlay([]netip.Prefix{netip.MustParsePrefix("100.96.3.7/24")})
	if got, want := describe(s.takeChanges()), []string{"100.96.3.0-24: 198.18.0.3 -> -"}; !slices.Equal(got, want) {
		t.Errorf("changes: %v, want %v", got, want)
	}
	s.setUnderlay(nil)
	if got, want := describe(s.takeChanges()), []string{"100.96.3.0-24: - -> 198.18.0.3"}; !slices.Equal(got, want) {
		t.Errorf("changes: %v, want %v", got, want)
	}
}
