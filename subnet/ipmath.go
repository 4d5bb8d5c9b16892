package subnet

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// u128 is an address as a 128-bit unsigned number, so that subnet
// arithmetic has one code path for IPv4 (the low 32 bits) and IPv6.
type u128 struct{ hi, lo uint64 }

func toU128(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

// fromU128 turns n back into an address of the family with the given bit
// length (32 or 128).
func fromU128(n u128, addrBits int) netip.Addr {
	if addrBits == 32 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(n.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], n.hi)
	binary.BigEndian.PutUint64(b[8:], n.lo)
	return netip.AddrFrom16(b)
}

func (n u128) add(m u128) u128 {
	lo, carry := bits.Add64(n.lo, m.lo, 0)
	hi, _ := bits.Add64(n.hi, m.hi, carry)
	return u128{hi, lo}
}

func (n u128) sub(m u128) u128 {
	lo, borrow := bits.Sub64(n.lo, m.lo, 0)
	hi, _ := bits.Sub64(n.hi, m.hi, borrow)
	return u128{hi, lo}
}

func (n u128) shl(s uint) u128 {
	switch {
	case s >= 128:
		return u128{}
	case s >= 64:
		return u128{hi: n.lo << (s - 64)}
	case s == 0:
		return n
	}
	return u128{hi: n.hi<<s | n.lo>>(64-s), lo: n.lo << s}
}

func (n u128) shr(s uint) u128 {
	switch {
	case s >= 128:
		return u128{}
	case s >= 64:
		return u128{lo: n.hi >> (s - 64)}
	case s == 0:
		return n
	}
	return u128{hi: n.hi >> s, lo: n.lo>>s | n.hi<<(64-s)}
}

// LastAddr returns the highest address in p (for IPv4, its broadcast
// address).
func LastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().BitLen()
	hostMask := u128{lo: 1}.shl(uint(b - p.Bits())).sub(u128{lo: 1})
	n := toU128(p.Masked().Addr())
	return fromU128(u128{hi: n.hi | hostMask.hi, lo: n.lo | hostMask.lo}, b)
}
