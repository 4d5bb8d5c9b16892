package kernel

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
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

func rtmsg(family, dstLen, table, protocol byte, flags uint32, attrs ...[]byte) []byte {
	m := []byte{family, dstLen, 0, 0, table, protocol, 0, 1, 0, 0, 0, 0}
	binary.NativeEndian.PutUint32(m[8:12], flags)
	for _, a := range attrs {
		m = append(m, a...)
	}
	return m
}

func u32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

func TestParseRoute(t *testing.T) {
	msg := rtmsg(unix.AF_INET, 24, unix.RT_TABLE_MAIN, RouteProtocol, unix.RTNH_F_ONLINK,
		attr(unix.RTA_TABLE, u32(unix.RT_TABLE_MAIN)),
		attr(unix.RTA_DST, []byte{100, 96, 2, 0}),
		attr(unix.RTA_PRIORITY, u32(2048)),
		attr(unix.RTA_GATEWAY, []byte{100, 96, 2, 0}),
		attr(unix.RTA_OIF, u32(7)))
	r, metric, ok := parseRoute(msg)
	want := Route{Dst: netip.MustParsePrefix("100.96.2.0/24"), Gw: netip.MustParseAddr("100.96.2.0"), LinkIndex: 7, OnLink: true}
	if !ok || r != want || metric != 2048 {
		t.Errorf("parseRoute = %v, %d, %v; want %v, 2048", r, metric, ok, want)
	}
	v6 := rtmsg(unix.AF_INET6, 64, unix.RT_TABLE_MAIN, RouteProtocol, 0,
		attr(unix.RTA_DST, netip.MustParseAddr("fd96:0:0:2::").AsSlice()),
		attr(unix.RTA_GATEWAY, netip.MustParseAddr("fd18::2").AsSlice()),
		attr(unix.RTA_OIF, u32(3)))
	if r, _, ok := parseRoute(v6); !ok || r.Dst != netip.MustParsePrefix("fd96:0:0:2::/64") || r.Gw != netip.MustParseAddr("fd18::2") || r.OnLink {
		t.Errorf("IPv6 route: %v, %v", r, ok)
	}
	for name, m := range map[string][]byte{
		"another protocol": rtmsg(unix.AF_INET, 24, unix.RT_TABLE_MAIN, 4, 0, attr(unix.RTA_DST, []byte{100, 96, 2, 0}), attr(unix.RTA_GATEWAY, []byte{1, 2, 3, 4})),
		"another table":    rtmsg(unix.AF_INET, 24, 100, RouteProtocol, 0, attr(unix.RTA_DST, []byte{100, 96, 2, 0}), attr(unix.RTA_GATEWAY, []byte{1, 2, 3, 4})),
		"no gateway":       rtmsg(unix.AF_INET, 24, unix.RT_TABLE_MAIN, RouteProtocol, 0, attr(unix.RTA_DST, []byte{100, 96, 2, 0})),
		"multipath":        rtmsg(unix.AF_INET, 24, unix.RT_TABLE_MAIN, RouteProtocol, 0, attr(unix.RTA_DST, []byte{100, 96, 2, 0}), attr(unix.RTA_MULTIPATH, make([]byte, 8))),
		"truncated":        rtmsg(unix.AF_INET, 24, unix.RT_TABLE_MAIN, RouteProtocol, 0)[:8],
	} {
		if r, _, ok := parseRoute(m); ok {
			t.Errorf("%s: parsed as %v", name, r)
		}
	}
}

// nlmsg frames payload as a netlink message.
func nlmsg(typ, flags uint16, seq uint32, payload []byte) []byte {
	m := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(payload)+4)
	binary.NativeEndian.PutUint32(m[0:4], uint32(unix.NLMSG_HDRLEN+len(payload)))
	binary.NativeEndian.PutUint16(m[4:6], typ)
	binary.NativeEndian.PutUint16(m[6:8], flags)
	binary.NativeEndian.PutUint32(m[8:12], seq)
	m = append(m, payload...)
	for len(m)%unix.NLMSG_ALIGNTO != 0 {
		m = append(m, 0)
	}
	return m
}

func TestReadDump(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	send := func(msgs ...[]byte) {
		var b []byte
		for _, m := range msgs {
			b = append(b, m...)
		}
		if _, err := unix.Write(fds[1], b); err != nil {
			t.Fatal(err)
		}
	}
	// Two reads of answers, one marked interrupted, a stray answer to
	// another request, then the end.
	send(nlmsg(unix.RTM_NEWROUTE, unix.NLM_F_MULTI, 7, []byte("a")), nlmsg(unix.RTM_NEWROUTE, unix.NLM_F_MULTI|unix.NLM_F_DUMP_INTR, 7, []byte("bb")))
	send(nlmsg(unix.RTM_NEWROUTE, unix.NLM_F_MULTI, 6, []byte("old")), nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, 7, make([]byte, 4)))
	var got []string
	buf := make([]byte, 1<<16)
	intr, err := readDump(fds[0], buf, 7, unix.RTM_NEWROUTE, func(m []byte) { got = append(got, string(m)) })
	if err != nil || !intr || strings.Join(got, ",") != "a,bb" {
		t.Errorf("readDump = %v, %v, messages %q", intr, err, got)
	}
	// An error answer.
	errno := make([]byte, 4)
	code := -int32(unix.EPERM)
	binary.NativeEndian.PutUint32(errno, uint32(code))
	send(nlmsg(unix.NLMSG_ERROR, 0, 8, errno))
	if _, err := readDump(fds[0], buf, 8, unix.RTM_NEWROUTE, func([]byte) {}); !errors.Is(err, unix.EPERM) {
		t.Errorf("readDump of an error = %v, want EPERM", err)
	}
	// A message that claims more than was read.
	bad := nlmsg(unix.RTM_NEWROUTE, 0, 9, []byte("x"))
	binary.NativeEndian.PutUint32(bad[0:4], 500)
	send(bad)
	if _, err := readDump(fds[0], buf, 9, unix.RTM_NEWROUTE, func([]byte) {}); err == nil {
		t.Error("readDump of a truncated message: no error")
	}
}
