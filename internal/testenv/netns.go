package testenv

import (
	"path/filepath"
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetNS is a throwaway network namespace for one test.
type NetNS struct {
	ns.NetNS
	// Name is its name under /run/netns, for `ip netns exec`.
	Name string
	// Netlink is a handle bound to the namespace.
	Netlink netlinksafe.Handle
}

// NewNetNS creates a network namespace that is removed when the test ends.
// It skips (fails under CI) without root.
func NewNetNS(t testing.TB) *NetNS {
	t.Helper()
	RequireRoot(t)
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("creating a network namespace: %v", err)
	}
	nsh, err := netns.GetFromPath(n.Path())
	if err != nil {
		testutils.UnmountNS(n)
		t.Fatalf("opening %s: %v", n.Path(), err)
	}
	h, err := netlinksafe.NewHandleAt(nsh, unix.NETLINK_ROUTE)
	nsh.Close()
	if err != nil {
		testutils.UnmountNS(n)
		t.Fatalf("netlink handle in %s: %v", n.Path(), err)
	}
	t.Cleanup(func() {
		h.Close()
		n.Close()
		testutils.UnmountNS(n)
	})
	if lo, err := h.LinkByName("lo"); err == nil {
		h.LinkSetUp(lo)
	}
	return &NetNS{NetNS: n, Name: filepath.Base(n.Path()), Netlink: h}
}

// Handle returns the namespace's handle, for netlink calls that take one.
func (n *NetNS) Handle() netns.NsHandle { return netns.NsHandle(n.Fd()) }

// AddUplink gives the namespace an interface name (one end of a veth pair
// whose other end, name+"-peer", stays up in the same namespace; this kernel
// has no dummy driver) with address addr, and returns its index.
func (n *NetNS) AddUplink(t testing.TB, name string, mtu int, addr string) int {
	t.Helper()
	h := n.Netlink
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: name + "-peer"}); err != nil {
		t.Fatalf("adding veth %s: %v", name, err)
	}
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	peer, _ := h.LinkByName(name + "-peer")
	h.LinkSetUp(peer)
	h.LinkSetUp(link)
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(link, a); err != nil {
		t.Fatalf("adding %s to %s: %v", addr, name, err)
	}
	return link.Attrs().Index
}

// InNamedNetNS runs f on a thread inside the network namespace
// /run/netns/name. Sockets f creates stay in that namespace, so a listener
// made here can be used (Accept) from any goroutine afterwards.
func InNamedNetNS(name string, f func() error) error {
	n, err := ns.GetNS(filepath.Join("/run/netns", name))
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Do(func(ns.NetNS) error { return f() })
}
