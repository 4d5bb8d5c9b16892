package subnet

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
)

// ErrPoolExhausted is wrapped by Allocate when every subnet is taken.
var ErrPoolExhausted = errors.New("subnet pool exhausted")

func (p Pool) addrBits() int { return p.Network.Addr().BitLen() }

// Count returns how many subnets lie between Min and Max, saturating at
// math.MaxUint64 for enormous IPv6 pools.
func (p Pool) Count() uint64 {
	n := toU128(p.Max).sub(toU128(p.Min)).shr(uint(p.addrBits() - p.SubnetLen))
	if n.hi != 0 || n.lo == math.MaxUint64 {
		return math.MaxUint64
	}
	return n.lo + 1
}

// Nth returns the i-th subnet counted from Min. i must be below Count.
func (p Pool) Nth(i uint64) netip.Prefix {
	off := u128{lo: i}.shl(uint(p.addrBits() - p.SubnetLen))
	return netip.PrefixFrom(fromU128(toU128(p.Min).add(off), p.addrBits()), p.SubnetLen)
}

// Contains reports whether sn is one of the pool's leasable subnets: of the
// right length, aligned, and between Min and Max.
func (p Pool) Contains(sn netip.Prefix) bool {
	if !p.Enabled() || !sn.IsValid() || sn.Bits() != p.SubnetLen || sn.Addr().BitLen() != p.addrBits() {
		return false
	}
	if sn.Masked() != sn {
		return false
	}
	a := sn.Addr()
	return !a.Less(p.Min) && !p.Max.Less(a)
}

// InNetwork reports whether sn is a subnet of the pool's network (of any
// length), whether or not it is within SubnetMin and SubnetMax.
func (p Pool) InNetwork(sn netip.Prefix) bool {
	return p.Enabled() && sn.IsValid() && sn.Addr().BitLen() == p.addrBits() && sn.Masked() == sn &&
		sn.Bits() >= p.Network.Bits() && p.Network.Contains(sn.Addr())
}

// Allocate picks a free subnet from the pool. taken holds the subnets other
// nodes lease; subnets in it that are not in the pool are ignored. The
// choice is random among the free subnets, so that nodes racing for a subnet
// rarely collide. It wraps ErrPoolExhausted when nothing is free.
func (p Pool) Allocate(taken map[netip.Prefix]bool, rnd *rand.Rand) (netip.Prefix, error) {
	count := p.Count()
	var used uint64
	for sn, t := range taken {
		if t && p.Contains(sn) {
			used++
		}
	}
	if used >= count {
		return netip.Prefix{}, fmt.Errorf("all %d subnets of %s between %s and %s are taken: %w",
			count, p.Network, p.Nth(0), p.Nth(count-1), ErrPoolExhausted)
	}
	// Probing from a random start finds a free subnet within used+1 steps.
	start := rnd.Uint64N(count)
	for i := uint64(0); ; i++ {
		sn := p.Nth((start + i) % count)
		if !taken[sn] {
			return sn, nil
		}
	}
}
