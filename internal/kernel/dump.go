package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nlaTypeMask clears the nested and byte-order flags of an attribute type.
const nlaTypeMask = 0x3fff

// dumped is a neighbour or FDB entry as a dump reports it.
type dumped struct {
	LinkIndex int
	State     uint16
	IP        netip.Addr
	// MAC is the link-layer address; HasMAC is false when the entry has
	// none of six bytes.
	MAC    [6]byte
	HasMAC bool
}

// dumpNeighs calls f with every neighbour entry of family (AF_BRIDGE: FDB
// entries) in the network namespace ns (netns.None(): the current one),
// parsing the kernel's dump as it arrives: unlike netlink's NeighList it
// holds no list, which at 10,000 entries was most of what a full sync
// allocated. f must not keep the entry it is given. A dump the kernel
// interrupted is read again after calling restart, so f sees every entry
// of one consistent dump.
func dumpNeighs(ns netns.NsHandle, family int, restart func(), f func(*dumped)) error {
	var n dumped // one for all entries: f must not keep it
	return dump(ns, unix.RTM_GETNEIGH, &netlink.Ndmsg{Family: uint8(family)}, restart, func(msg []byte) {
		var ok bool
		if n, ok = parseNeigh(msg); ok {
			f(&n)
		}
	})
}

// dumpRoutes calls f with every route of weft's protocol in the main
// table, of both families, in the network namespace ns, with its metric,
// parsing the kernel's dump as it arrives without netlink's Route (whose
// decoding was most of what a full sync allocated). Restarts as
// dumpNeighs.
func dumpRoutes(ns netns.NsHandle, restart func(), f func(r Route, metric int)) error {
	return dump(ns, unix.RTM_GETROUTE, &nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_UNSPEC}}, restart, func(msg []byte) {
		if r, metric, ok := parseRoute(msg); ok {
			f(r, metric)
		}
	})
}

// dump runs one netlink dump request of type typ in ns and calls f with
// each message of the answer's type (its payload), reading a dump the
// kernel interrupted again (after restart), up to five times. It reads
// into one buffer and parses in place: netlink's own reader copies every
// answer, several megabytes per full sync of 10,000 peers.
func dump(ns netns.NsHandle, typ int, data nl.NetlinkRequestData, restart func(), f func(msg []byte)) error {
	fd, err := socketIn(ns)
	if err != nil {
		return fmt.Errorf("opening a netlink socket: %w", err)
	}
	defer unix.Close(fd)
	buf := make([]byte, 1<<16) // more than a dump's messages per read
	answer := uint16(typ - 2)  // RTM_GETX - 2 is RTM_NEWX
	for attempt := range 5 {
		if attempt > 0 {
			restart()
		}
		req := nl.NewNetlinkRequest(typ, unix.NLM_F_DUMP)
		req.AddData(data)
		if err := unix.Sendto(fd, req.Serialize(), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return fmt.Errorf("sending a dump request: %w", err)
		}
		interrupted, err := readDump(fd, buf, req.Seq, answer, f)
		if err != nil {
			return err
		}
		if !interrupted {
			return nil
		}
	}
	return netlink.ErrDumpInterrupted
}

// readDump reads the answer to dump request seq until its end, calling f
// with each message of type answer, and reports whether the kernel marked
// it interrupted (its objects changed meanwhile).
func readDump(fd int, buf []byte, seq uint32, answer uint16, f func(msg []byte)) (interrupted bool, err error) {
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("reading a dump: %w", err)
		}
		for b := buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(b[0:4]))
			typ := binary.NativeEndian.Uint16(b[4:6])
			flags := binary.NativeEndian.Uint16(b[6:8])
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return false, fmt.Errorf("reading a dump: a message of %d bytes in %d", l, len(b))
			}
			if binary.NativeEndian.Uint32(b[8:12]) == seq {
				interrupted = interrupted || flags&unix.NLM_F_DUMP_INTR != 0
				payload := b[unix.NLMSG_HDRLEN:l]
				switch typ {
				case unix.NLMSG_DONE:
					return interrupted, nil
				case unix.NLMSG_ERROR:
					if len(payload) >= 4 {
						if errno := -int32(binary.NativeEndian.Uint32(payload[0:4])); errno != 0 {
							return false, fmt.Errorf("dump: %w", unix.Errno(errno))
						}
					}
				case answer:
					f(payload)
				}
			}
			b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
		}
	}
}

// socketIn opens a blocking netlink route socket in ns (0 or
// netns.None(): the current namespace).
func socketIn(ns netns.NsHandle) (int, error) {
	if ns == 0 || ns == netns.None() {
		return rtnlSocket()
	}
	// Sockets stay in the namespace they were made in: make it there, on a
	// locked thread, and come back.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cur, err := netns.Get()
	if err != nil {
		return -1, err
	}
	defer cur.Close()
	if err := netns.Set(ns); err != nil {
		return -1, err
	}
	fd, err := rtnlSocket()
	if serr := netns.Set(cur); serr != nil {
		// The thread is in the wrong namespace: let it die with the
		// goroutine rather than run anything else.
		runtime.LockOSThread()
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, fmt.Errorf("returning to the original network namespace: %w", serr)
	}
	return fd, err
}

func rtnlSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// parseRoute decodes an RTM_NEWROUTE message: struct rtmsg, then
// attributes. ok is false for a route weft cannot have made: another
// protocol or table, no destination or gateway, several next hops.
func parseRoute(msg []byte) (r Route, metric int, ok bool) {
	const rtmsgLen = 12
	if len(msg) < rtmsgLen {
		return Route{}, 0, false
	}
	dstLen, table, protocol := int(msg[1]), uint32(msg[4]), msg[5]
	flags := binary.NativeEndian.Uint32(msg[8:12])
	if protocol != RouteProtocol {
		return Route{}, 0, false
	}
	var dst, gw netip.Addr
	for b := msg[rtmsgLen:]; len(b) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if l < unix.SizeofRtAttr || l > len(b) {
			break
		}
		data := b[unix.SizeofRtAttr:l]
		switch typ {
		case unix.RTA_DST:
			dst, _ = netip.AddrFromSlice(data)
		case unix.RTA_GATEWAY:
			gw, _ = netip.AddrFromSlice(data)
		case unix.RTA_OIF:
			if len(data) == 4 {
				r.LinkIndex = int(int32(binary.NativeEndian.Uint32(data)))
			}
		case unix.RTA_PRIORITY:
			if len(data) == 4 {
				metric = int(binary.NativeEndian.Uint32(data))
			}
		case unix.RTA_TABLE:
			if len(data) == 4 {
				table = binary.NativeEndian.Uint32(data)
			}
		case unix.RTA_MULTIPATH:
			return Route{}, 0, false
		}
		b = b[min(len(b), (l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1)):]
	}
	if table != mainTable || !dst.IsValid() || !gw.IsValid() {
		return Route{}, 0, false
	}
	p, err := dst.Unmap().Prefix(dstLen)
	if err != nil {
		return Route{}, 0, false
	}
	r.Dst, r.Gw, r.OnLink = p, gw.Unmap(), flags&unix.RTNH_F_ONLINK != 0
	return r, metric, true
}

// parseNeigh decodes an RTM_NEWNEIGH message: struct ndmsg, then
// attributes, of which it reads NDA_DST and NDA_LLADDR.
func parseNeigh(msg []byte) (dumped, bool) {
	const ndmsgLen = 12
	if len(msg) < ndmsgLen {
		return dumped{}, false
	}
	n := dumped{
		LinkIndex: int(int32(binary.NativeEndian.Uint32(msg[4:8]))),
		State:     binary.NativeEndian.Uint16(msg[8:10]),
	}
	for b := msg[ndmsgLen:]; len(b) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if l < unix.SizeofRtAttr || l > len(b) {
			break
		}
		data := b[unix.SizeofRtAttr:l]
		switch typ {
		case unix.NDA_DST:
			if ip, ok := netip.AddrFromSlice(data); ok {
				n.IP = ip.Unmap()
			}
		case unix.NDA_LLADDR:
			if len(data) == len(n.MAC) {
				copy(n.MAC[:], data)
				n.HasMAC = true
			}
		}
		b = b[min(len(b), (l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1)):]
	}
	return n, true
}
