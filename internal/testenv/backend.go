package testenv

import (
	"context"
	"testing"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/kernel"
	"github.com/weft-net/weft/subnet"
)

// Node is a backend on a test namespace's kernel layer, driven the way
// internal/reconcile drives them, so that a backend's tests see the kernel
// a node would have.
type Node struct {
	Backend backend.Backend
	NS      *NetNS
	Ext     *backend.ExternalInterface
	Self    *subnet.Lease
	Kernel  *kernel.Kernel
}

// NewNode returns b on n's kernel, with ext as its external interface and
// self as this node's lease.
func NewNode(b backend.Backend, n *NetNS, ext *backend.ExternalInterface, self *subnet.Lease) *Node {
	return &Node{Backend: b, NS: n, Ext: ext, Self: self, Kernel: kernel.New(n.Netlink, n.Handle())}
}

// Setup runs the backend's Setup.
func (n *Node) Setup() (backend.Published, error) {
	return n.Backend.Setup(context.Background(), n.Ext, n.Self)
}

// Sync is a full sync of peers: Setup, every peer's entries, one kernel
// Sync. It returns each peer's state and reason, and what the kernel
// layer did; a failed Setup fails t.
func (n *Node) Sync(t testing.TB, peers []*subnet.Lease) ([]backend.PeerState, []string, kernel.Result) {
	t.Helper()
	if _, err := n.Setup(); err != nil {
		t.Fatalf("Setup: %v", err)
	}
	u := backend.NewUnderlay(n.NS.Netlink)
	want := n.Kernel.NewWant(len(peers))
	var e kernel.Entries
	states, whys := make([]backend.PeerState, len(peers)), make([]string, len(peers))
	for i, p := range peers {
		e.Reset()
		states[i], whys[i] = n.Backend.Peer(p, u, &e)
		want.Add(i, &e)
	}
	want.Links = n.Backend.Links()
	return states, whys, n.Kernel.Sync(want)
}

// Change is one peer's lease before and after (nil: none).
type Change struct{ Old, New *subnet.Lease }

// Update programs changes as the reconciler does between full syncs, and
// returns the states of the changes' new leases, in order.
func (n *Node) Update(changes []Change) ([]backend.PeerState, kernel.Result) {
	u := backend.NewUnderlay(n.NS.Netlink)
	kc := make([]kernel.Change, len(changes))
	var states []backend.PeerState
	for i, c := range changes {
		kc[i].Owner = i
		if c.Old != nil {
			kc[i].Old = &kernel.Entries{}
			n.Backend.Peer(c.Old, u, kc[i].Old)
		}
		if c.New != nil {
			kc[i].New = &kernel.Entries{}
			st, _ := n.Backend.Peer(c.New, u, kc[i].New)
			states = append(states, st)
		}
	}
	return states, n.Kernel.Update(kc)
}

// Count counts states as the daemon reports them.
func Count(states []backend.PeerState) backend.Stats {
	var c [backend.NumPeerStates]int
	for _, st := range states {
		c[st]++
	}
	return backend.StatsOf(c)
}
