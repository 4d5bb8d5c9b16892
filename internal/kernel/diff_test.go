package kernel

import (
	"net/netip"
	"testing"
)

func route(dst, gw string, link int, onlink bool) Route {
	return Route{Dst: netip.MustParsePrefix(dst), Gw: netip.MustParseAddr(gw), LinkIndex: link, OnLink: onlink}
}

// collect returns what a diff would add and delete.
func collect[E keyed[E]](d *diff[E]) (add, del []E) {
	d.adds(func(e E, _ int32) { add = append(add, e) })
	d.dels(func(e E, _ int32) { del = append(del, e) })
	return add, del
}

func TestDiffAddsChangedAndDeletesStale(t *testing.T) {
	have := []Route{
		route("100.96.2.0/24", "100.96.2.0", 5, true),  // unchanged
		route("100.96.3.0/24", "198.18.0.3", 2, false), // changes backend
		route("100.96.4.0/24", "100.96.4.0", 5, true),  // gone
	}
	want := []Route{
		route("100.96.2.0/24", "100.96.2.0", 5, true),
		route("100.96.3.0/24", "100.96.3.0", 5, true),
		route("100.96.5.0/24", "100.96.5.0", 5, true), // new
	}
	d := newDiff(want, make([]int32, len(want)))
	d.see(have[0], noOwner) // a dump interrupted halfway, then read again
	d.restart()
	for _, h := range have {
		d.see(h, noOwner)
	}
	add, del := collect(d)
	if len(add) != 2 || add[0] != want[1] || add[1] != want[2] {
		t.Errorf("add = %v", add)
	}
	want = []Route{ // newDiff sorted the first want
		route("100.96.2.0/24", "100.96.2.0", 5, true),
		route("100.96.3.0/24", "100.96.3.0", 5, true),
		route("100.96.5.0/24", "100.96.5.0", 5, true),
	}
	if len(del) != 1 || del[0] != have[2] {
		t.Errorf("del = %v", del)
	}
	d = newDiff(want, make([]int32, len(want)))
	for _, w := range want {
		d.see(w, noOwner)
	}
	if add, del := collect(d); len(add)+len(del) != 0 {
		t.Errorf("no-op diff: add %v, del %v", add, del)
	}
}

func TestDiffOfAChangeMovesAnEntryBetweenOwners(t *testing.T) {
	// Peer 1 leaves and peer 2 takes its subnet in the same batch: the
	// route is replaced, never deleted.
	old := route("100.96.3.0/24", "100.96.3.0", 5, true)
	cur := route("100.96.3.0/24", "198.18.0.7", 2, false)
	d := newDiff([]Route{cur}, []int32{2})
	d.see(old, 1)
	add, del := collect(d)
	if len(add) != 1 || add[0] != cur || len(del) != 0 {
		t.Errorf("add %v, del %v; want the new route added (replacing) and nothing deleted", add, del)
	}
}

func TestDiffWantsEachKeyOnce(t *testing.T) {
	// Two owners name one FDB entry (a shared VTEP MAC): one add.
	f := FDB{LinkIndex: 5, MAC: MAC{0x0e, 0, 0, 0, 0, 4}, Dst: netip.MustParseAddr("198.18.0.4")}
	g := FDB{LinkIndex: 5, MAC: MAC{0x0e, 0, 0, 0, 0, 3}, Dst: netip.MustParseAddr("198.18.0.3")}
	d := newDiff([]FDB{f, g, f}, []int32{4, 3, 5})
	if add, _ := collect(d); len(add) != 2 {
		t.Errorf("add = %v, want two entries", add)
	}
	// Of two wanted values of one key the last given counts.
	moved := f
	moved.Dst = netip.MustParseAddr("198.18.0.44")
	d = newDiff([]FDB{f, moved}, []int32{4, 5})
	d.see(moved, noOwner)
	if add, del := collect(d); len(add) != 0 || len(del) != 0 {
		t.Errorf("add %v, del %v; want nothing (the entry there is the last wanted)", add, del)
	}
}

func BenchmarkDiff10k(b *testing.B) {
	var want []Route
	for i := range 10000 {
		a := netip.AddrFrom4([4]byte{100, 96 + byte(i>>8), byte(i), 0})
		want = append(want, Route{Dst: netip.PrefixFrom(a, 24), Gw: a, LinkIndex: 5, OnLink: true})
	}
	owners := make([]int32, len(want))
	b.ReportAllocs()
	for b.Loop() {
		d := newDiff(want, owners)
		for _, r := range want[:9900] {
			d.see(r, noOwner)
		}
		d.adds(func(Route, int32) {})
		d.dels(func(Route, int32) {})
	}
}

func TestRouteMetricIsStableAndSpread(t *testing.T) {
	seen := map[int]int{}
	for i := range 10000 {
		a := netip.AddrFrom4([4]byte{100, 96 + byte(i>>8), byte(i), 0})
		p := netip.PrefixFrom(a, 24)
		m := RouteMetric(p)
		if m != RouteMetric(p) || m < 1024 || m > 5119 {
			t.Fatalf("RouteMetric(%s) = %d", p, m)
		}
		seen[m]++
	}
	// 10,000 destinations over 4096 metrics: no metric should hold many.
	for m, n := range seen {
		if n > 16 {
			t.Errorf("metric %d is shared by %d routes", m, n)
		}
	}
}
