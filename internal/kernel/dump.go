package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

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
	if ns == 0 {
		ns = netns.None()
	}
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("opening a netlink socket: %w", err)
	}
	defer sock.Close()
	sockets := map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: sock}}
	var n dumped // one for all entries: f must not keep it
	for attempt := range 5 {
		if attempt > 0 {
			restart()
		}
		req := nl.NewNetlinkRequest(unix.RTM_GETNEIGH, unix.NLM_F_DUMP)
		req.AddData(&netlink.Ndmsg{Family: uint8(family)})
		req.Sockets = sockets
		err = req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWNEIGH, func(msg []byte) bool {
			var ok bool
			if n, ok = parseNeigh(msg); ok {
				f(&n)
			}
			return true
		})
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
	}
	return err
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
