package subnet

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func mustConfig(t testing.TB, s string) *Config {
	t.Helper()
	cfg, _, err := ParseConfig([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestAllocateFillsThePoolThenReportsExhaustion(t *testing.T) {
	cfg := mustConfig(t, `{"Network":"100.96.0.0/22"}`) // subnets .1, .2, .3
	pool := cfg.IPv4
	rnd := rand.New(rand.NewPCG(1, 2))
	taken := map[netip.Prefix]bool{}
	for i := 0; i < 3; i++ {
		sn, err := pool.Allocate(taken, rnd)
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if taken[sn] || !pool.Contains(sn) {
			t.Fatalf("allocation %d returned %v (taken %v)", i, sn, taken)
		}
		taken[sn] = true
	}
	_, err := pool.Allocate(taken, rnd)
	if !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("err = %v, want ErrPoolExhausted", err)
	}
	want := "all 3 subnets of 100.96.0.0/22 between 100.96.1.0/24 and 100.96.3.0/24 are taken: subnet pool exhausted"
	if err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
}

func TestAllocateIgnoresSubnetsOutsideThePool(t *testing.T) {
	pool := mustConfig(t, `{"Network":"100.96.0.0/22"}`).IPv4
	taken := map[netip.Prefix]bool{
		netip.MustParsePrefix("100.96.1.0/24"): true,
		netip.MustParsePrefix("100.96.2.0/24"): true,
		netip.MustParsePrefix("10.0.0.0/24"):   true, // not ours
		netip.MustParsePrefix("100.96.0.0/24"): true, // below SubnetMin
	}
	sn, err := pool.Allocate(taken, rand.New(rand.NewPCG(3, 4)))
	if err != nil || sn != netip.MustParsePrefix("100.96.3.0/24") {
		t.Fatalf("Allocate = %v, %v; want 100.96.3.0/24", sn, err)
	}
}

func TestAllocateIPv6(t *testing.T) {
	pool := mustConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd96::/32"}`).IPv6
	if got := pool.Count(); got != 1<<32-1 {
		t.Fatalf("Count = %d", got)
	}
	sn, err := pool.Allocate(nil, rand.New(rand.NewPCG(5, 6)))
	if err != nil || !pool.Contains(sn) || sn.Bits() != 64 {
		t.Fatalf("Allocate = %v, %v", sn, err)
	}
}

func TestPoolCountSaturates(t *testing.T) {
	pool := mustConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/8","IPv6SubnetLen":120}`).IPv6
	if got := pool.Count(); got != ^uint64(0) {
		t.Fatalf("Count = %d, want saturated", got)
	}
	if _, err := pool.Allocate(nil, rand.New(rand.NewPCG(7, 8))); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkAllocate(b *testing.B) {
	pool := mustConfig(b, `{"Network":"100.96.0.0/12"}`).IPv4
	rnd := rand.New(rand.NewPCG(1, 1))
	taken := map[netip.Prefix]bool{}
	for i := uint64(0); i < 4000; i++ {
		taken[pool.Nth(i)] = true
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := pool.Allocate(taken, rnd); err != nil {
			b.Fatal(err)
		}
	}
}
