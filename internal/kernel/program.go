package kernel

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Kernel programs weft's routes, neighbour and FDB entries in one network
// namespace. Sync reads the kernel and makes it hold exactly what is
// wanted; Update applies what changed for some owners (peers), trusting
// that the kernel still holds what was last programmed (the caller runs
// Sync again when it may not: periodically, after kernel events, after a
// failure). Both use one diff and apply it in one order: new and changed
// FDB entries, neighbours and routes first, then deletions in reverse, so
// that a route never points at a neighbour that is not there yet. It is not
// safe for concurrent use: one goroutine, the reconciler, owns it.
type Kernel struct {
	h  netlinksafe.Handle
	ns netns.NsHandle
	// fdbUsers counts the wanted entries naming each FDB entry: leases may
	// share a VTEP MAC (a node's old and new lease), and the kernel entry
	// goes only with the last of them.
	fdbUsers map[fdbKey]int32
	// last is the size of the last Want synced, to size the next one.
	last struct{ routes, neighs, fdbs int }
}

// NewWant returns an empty Want with room for as many entries as the last
// Sync had, or, before the first, for one entry of each kind for each of
// owners: a full sync of thousands of peers then grows nothing.
func (k *Kernel) NewWant(owners int) *Want {
	n := k.last
	if n.routes+n.neighs+n.fdbs == 0 {
		n.routes, n.neighs, n.fdbs = owners, owners, owners
	}
	return &Want{
		Routes: make([]Route, 0, n.routes), routeOwner: make([]int32, 0, n.routes),
		Neighs: make([]Neigh, 0, n.neighs), neighOwner: make([]int32, 0, n.neighs),
		FDBs: make([]FDB, 0, n.fdbs), fdbOwner: make([]int32, 0, n.fdbs),
	}
}

// New returns a Kernel for the namespace of h; ns is that namespace, for
// the dumps netlink has no streaming call for (0 or netns.None(): the
// current one).
func New(h netlinksafe.Handle, ns netns.NsHandle) *Kernel {
	return &Kernel{h: h, ns: ns, fdbUsers: map[fdbKey]int32{}}
}

// Want is everything the kernel should hold, collected from every owner.
type Want struct {
	Routes []Route
	Neighs []Neigh
	FDBs   []FDB
	// Links are the devices whose permanent neighbour and FDB entries are
	// weft's: Sync deletes those nobody wants. Routes weft owns are known
	// by RouteProtocol.
	Links []int

	routeOwner, neighOwner, fdbOwner []int32
}

// Add adds owner's entries.
func (w *Want) Add(owner int, e *Entries) {
	w.Routes, w.routeOwner = appendOwned(w.Routes, w.routeOwner, e.Routes, owner)
	w.Neighs, w.neighOwner = appendOwned(w.Neighs, w.neighOwner, e.Neighs, owner)
	w.FDBs, w.fdbOwner = appendOwned(w.FDBs, w.fdbOwner, e.FDBs, owner)
}

func appendOwned[E any](dst []E, owners []int32, src []E, owner int) ([]E, []int32) {
	for range src {
		owners = append(owners, int32(owner))
	}
	return append(dst, src...), owners
}

// Change is one owner's entries before and after a change; nil is none.
type Change struct {
	Owner    int
	Old, New *Entries
}

// Result is what a Sync or Update did.
type Result struct {
	// Changed counts the entries added, replaced or deleted.
	Changed int
	// Failed holds, by owner, the entries the kernel refused; the other
	// owners' entries were applied.
	Failed map[int]error
	// Err is what cannot be laid at one owner's door: a dump that could
	// not be read (then nothing was changed), a stale entry that could not
	// be deleted.
	Err error
}

// Error joins every error of r, or returns nil.
func (r *Result) Error() error {
	errs := []error{r.Err}
	for _, err := range r.Failed {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (r *Result) fail(owner int32, err error) {
	if owner == noOwner {
		r.Err = errors.Join(r.Err, err)
		return
	}
	if r.Failed == nil {
		r.Failed = map[int]error{}
	}
	r.Failed[int(owner)] = errors.Join(r.Failed[int(owner)], err)
}

// Sync makes the kernel hold exactly w: it reads weft's routes, and the
// permanent neighbour and FDB entries of w.Links, as the dumps stream in,
// and applies the difference.
func (k *Kernel) Sync(w *Want) Result {
	k.last.routes, k.last.neighs, k.last.fdbs = len(w.Routes), len(w.Neighs), len(w.FDBs)
	routes := newDiff(w.Routes, w.routeOwner)
	neighs := newDiff(w.Neighs, w.neighOwner)
	fdbs := newDiff(w.FDBs, w.fdbOwner)
	if err := k.eachOwnedRoute(routes.restart, func(r Route) { routes.see(r, noOwner) }); err != nil {
		return Result{Err: err}
	}
	if len(w.Links) > 0 {
		links := make(map[int]bool, len(w.Links))
		for _, l := range w.Links {
			links[l] = true
		}
		if err := k.readNeighs(links, neighs, fdbs); err != nil {
			return Result{Err: err}
		}
	}
	clear(k.fdbUsers)
	for _, f := range w.FDBs {
		k.fdbUsers[f.key()]++
	}
	var res Result
	k.apply(&res, routes, neighs, fdbs)
	return res
}

// readNeighs feeds the permanent neighbour and FDB entries of links to
// their diffs.
func (k *Kernel) readNeighs(links map[int]bool, neighs *diff[Neigh], fdbs *diff[FDB]) error {
	err := dumpNeighs(k.ns, netlink.FAMILY_ALL, neighs.restart, func(n *dumped) {
		if links[n.LinkIndex] && n.State&netlink.NUD_PERMANENT != 0 && n.IP.IsValid() && n.HasMAC {
			neighs.see(Neigh{LinkIndex: n.LinkIndex, IP: n.IP, MAC: n.MAC}, noOwner)
		}
	})
	if err != nil {
		return fmt.Errorf("listing neighbour entries: %w", err)
	}
	err = dumpNeighs(k.ns, syscall.AF_BRIDGE, fdbs.restart, func(f *dumped) {
		if links[f.LinkIndex] && f.State&netlink.NUD_PERMANENT != 0 && f.IP.IsValid() && !f.IP.IsUnspecified() && f.HasMAC {
			fdbs.see(FDB{LinkIndex: f.LinkIndex, MAC: f.MAC, Dst: f.IP}, noOwner)
		}
	})
	if err != nil {
		return fmt.Errorf("listing FDB entries: %w", err)
	}
	return nil
}

// Update applies changes without reading the kernel: the entries of each
// owner before the change are what is there, after it what is wanted. Its
// cost is in proportion to the size of the changes.
func (k *Kernel) Update(changes []Change) Result {
	var w Want
	for _, c := range changes {
		if c.New != nil {
			w.Add(c.Owner, c.New)
		}
	}
	routes := newDiff(w.Routes, w.routeOwner)
	neighs := newDiff(w.Neighs, w.neighOwner)
	fdbs := newDiff(w.FDBs, w.fdbOwner)
	for _, f := range w.FDBs {
		k.fdbUsers[f.key()]++
	}
	for _, c := range changes {
		if c.Old == nil {
			continue
		}
		owner := int32(c.Owner)
		for _, r := range c.Old.Routes {
			routes.see(r, owner)
		}
		for _, n := range c.Old.Neighs {
			neighs.see(n, owner)
		}
		for _, f := range c.Old.FDBs {
			fdbs.see(f, owner)
			if k.fdbUsers[f.key()]--; k.fdbUsers[f.key()] <= 0 {
				delete(k.fdbUsers, f.key())
			}
		}
	}
	var res Result
	k.apply(&res, routes, neighs, fdbs)
	return res
}

// apply makes the changes the diffs found: additions first, deletions
// after, in reverse order of dependence. An FDB entry another owner still
// uses is not deleted.
func (k *Kernel) apply(res *Result, routes *diff[Route], neighs *diff[Neigh], fdbs *diff[FDB]) {
	do := func(owner int32, err error) {
		if err != nil {
			res.fail(owner, err)
			return
		}
		res.Changed++
	}
	fdbs.adds(func(f FDB, owner int32) { do(owner, k.setFDB(f)) })
	neighs.adds(func(n Neigh, owner int32) { do(owner, k.setNeigh(n)) })
	routes.adds(func(r Route, owner int32) { do(owner, k.addRoute(r)) })
	routes.dels(func(r Route, owner int32) { do(owner, k.delRoute(r)) })
	neighs.dels(func(n Neigh, owner int32) { do(owner, k.delNeigh(n)) })
	fdbs.dels(func(f FDB, owner int32) {
		if k.fdbUsers[f.key()] <= 0 {
			do(owner, k.delFDB(f))
		}
	})
}

func family(ip netip.Addr) int {
	if ip.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func (k *Kernel) setNeigh(n Neigh) error {
	nn := &netlink.Neigh{LinkIndex: n.LinkIndex, Family: family(n.IP), State: netlink.NUD_PERMANENT, Type: syscall.RTN_UNICAST, IP: n.IP.AsSlice(), HardwareAddr: n.MAC.HW()}
	if err := k.h.NeighSet(nn); err != nil {
		return fmt.Errorf("adding neighbour %s lladdr %s dev #%d: %w", n.IP, n.MAC, n.LinkIndex, err)
	}
	return nil
}

func (k *Kernel) delNeigh(n Neigh) error {
	nn := &netlink.Neigh{LinkIndex: n.LinkIndex, Family: family(n.IP), IP: n.IP.AsSlice(), HardwareAddr: n.MAC.HW()}
	if err := k.h.NeighDel(nn); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("deleting neighbour %s dev #%d: %w", n.IP, n.LinkIndex, err)
	}
	return nil
}

func (k *Kernel) setFDB(f FDB) error {
	nn := &netlink.Neigh{LinkIndex: f.LinkIndex, Family: syscall.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT, IP: f.Dst.AsSlice(), HardwareAddr: f.MAC.HW()}
	if err := k.h.NeighSet(nn); err != nil {
		return fmt.Errorf("adding fdb %s dst %s dev #%d: %w", f.MAC, f.Dst, f.LinkIndex, err)
	}
	return nil
}

func (k *Kernel) delFDB(f FDB) error {
	nn := &netlink.Neigh{LinkIndex: f.LinkIndex, Family: syscall.AF_BRIDGE, Flags: netlink.NTF_SELF, IP: f.Dst.AsSlice(), HardwareAddr: f.MAC.HW()}
	if err := k.h.NeighDel(nn); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("deleting fdb %s dst %s dev #%d: %w", f.MAC, f.Dst, f.LinkIndex, err)
	}
	return nil
}

// SweepLinks deletes weft's devices (named weft.* or weft-*) that are not
// in owned: leftovers of a backend this node ran before a restart. It
// returns the names it deleted.
func (k *Kernel) SweepLinks(owned map[string]bool) ([]string, error) {
	links, err := k.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing devices: %w", err)
	}
	var removed []string
	var errs []error
	for _, l := range links {
		name := l.Attrs().Name
		if !strings.HasPrefix(name, "weft.") && !strings.HasPrefix(name, "weft-") || owned[name] {
			continue
		}
		if err := k.h.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("deleting device %s: %w", name, err))
			continue
		}
		removed = append(removed, name)
	}
	return removed, errors.Join(errs...)
}
