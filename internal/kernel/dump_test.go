package kernel

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// neighMsg builds an RTM_NEWNEIGH payload: ndmsg, then attributes.
func neighMsg(ifindex int32, state uint16, attrs ...[]byte) []byte {
	m := make([]byte, 12)
	m[0] = unix.AF_INET
	binary.NativeEndian.PutUint32(m[4:8], uint32(ifindex))
	binary.NativeEndian.PutUint16(m[8:10], state)
	for _, a := range attrs {
		m = append(m, a...)
	}
	return m
}

func attr(typ uint16, data []byte) []byte {
	a := make([]byte, 4, 4+len(data)+3)
	binary.NativeEndian.PutUint16(a[0:2], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(a[2:4], typ)
	a = append(a, data...)
	for len(a)%4 != 0 {
		a = append(a, 0) // padding to the 4-byte alignment
	}
	return a
}

func TestParseNeigh(t *testing.T) {
	mac := []byte{0x0e, 0, 0, 0, 0, 2}
	n, ok := parseNeigh(neighMsg(7, unix.NUD_PERMANENT,
		attr(unix.NDA_LLADDR, mac), // 6 bytes: padded to 8
		attr(unix.NDA_DST, []byte{100, 96, 2, 0}),
		attr(unix.NDA_PROBES, []byte{0, 0, 0, 0})))
	want := dumped{LinkIndex: 7, State: unix.NUD_PERMANENT, IP: netip.MustParseAddr("100.96.2.0"), MAC: [6]byte(mac), HasMAC: true}
	if !ok || n != want {
		t.Errorf("parseNeigh = %+v, %v; want %+v", n, ok, want)
	}

	// An entry without a 6-byte link-layer address (an IPoIB neighbour,
	// say) and a truncated attribute are read as far as they go.
	n, ok = parseNeigh(neighMsg(3, unix.NUD_REACHABLE, attr(unix.NDA_DST, netip.MustParseAddr("fd18::2").AsSlice()), attr(unix.NDA_LLADDR, make([]byte, 20))))
	if !ok || n.HasMAC || n.IP != netip.MustParseAddr("fd18::2") {
		t.Errorf("long lladdr: %+v, %v", n, ok)
	}
	truncated := neighMsg(3, 0, attr(unix.NDA_DST, []byte{100, 96, 2, 0}))
	binary.NativeEndian.PutUint16(truncated[12:14], 200) // claims more than there is
	if n, ok := parseNeigh(truncated); !ok || n.IP.IsValid() {
		t.Errorf("truncated attribute: %+v, %v", n, ok)
	}
	if _, ok := parseNeigh(make([]byte, 5)); ok {
		t.Error("a message shorter than ndmsg parsed")
	}
}
