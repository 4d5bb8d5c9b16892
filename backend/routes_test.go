package backend

import (
	"net/netip"
	"testing"
)

func TestRouteDiffAddsChangedAndDeletesStale(t *testing.T) {
	r := func(dst, gw string, link int, onlink bool) Route {
		return Route{Dst: netip.MustParsePrefix(dst), Gw: netip.MustParseAddr(gw), LinkIndex: link, OnLink: onlink}
	}
	have := []Route{
		r("100.96.2.0/24", "100.96.2.0", 5, true),  // unchanged
		r("100.96.3.0/24", "198.18.0.3", 2, false), // changes backend
		r("100.96.4.0/24", "100.96.4.0", 5, true),  // gone
	}
	want := []Route{
		r("100.96.2.0/24", "100.96.2.0", 5, true),
		r("100.96.3.0/24", "100.96.3.0", 5, true),
		r("100.96.5.0/24", "100.96.5.0", 5, true), // new
	}
	d := newRouteDiff(want)
	d.see(have[0]) // a dump interrupted halfway, then read again
	d.restart()
	for _, h := range have {
		d.see(h)
	}
	delta := d.result()
	if len(delta.Add) != 2 || delta.Add[0] != want[1] || delta.Add[1] != want[2] {
		t.Errorf("add = %v", delta.Add)
	}
	if len(delta.Del) != 1 || delta.Del[0] != have[2] {
		t.Errorf("del = %v", delta.Del)
	}
	d = newRouteDiff(want)
	for _, w := range want {
		d.see(w)
	}
	if delta := d.result(); len(delta.Add)+len(delta.Del) != 0 {
		t.Errorf("no-op diff = %+v", delta)
	}
}

func BenchmarkRouteDiff10k(b *testing.B) {
	var want []Route
	for i := range 10000 {
		a := netip.AddrFrom4([4]byte{100, 96 + byte(i>>8), byte(i), 0})
		want = append(want, Route{Dst: netip.PrefixFrom(a, 24), Gw: a, LinkIndex: 5, OnLink: true})
	}
	b.ReportAllocs()
	for b.Loop() {
		d := newRouteDiff(want)
		for _, r := range want[:9900] {
			d.see(r)
		}
		d.result()
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
