package kernel

import (
	"sort"
)

// keyed is a kind of kernel entry. compare orders entries by their key: a
// route is identified by its destination, a neighbour entry by device and
// address, an FDB entry by device and MAC. Two entries with the same key
// and different values are one entry that changed.
type keyed[E any] interface {
	comparable
	compare(E) int
}

// diff compares what is there with what is wanted, for one kind of entry.
// What is there arrives one entry at a time (see), from a kernel dump as
// it streams in or from the entries of peers before a change; diff holds
// no copy of it. Each wanted entry has an owner (a peer), each entry seen
// may have one, so that a failure can be laid at a peer's door. The wanted
// entries are sorted in place and looked up by binary search: a full sync
// of 10,000 peers then needs no index beside them. It is pure.
type diff[E keyed[E]] struct {
	want  []E     // sorted by key
	owner []int32 // owner[i] owns want[i]
	held  []bool  // want[i] is there as it is
	del   []E     // entries there whose key nobody wants
	delBy []int32 // the owner of each of del, or noOwner
}

// noOwner marks an entry no peer owns (one read from the kernel).
const noOwner = -1

// newDiff takes over want and owner (parallel slices) and sorts them; of
// several wanted entries with one key the last given counts.
func newDiff[E keyed[E]](want []E, owner []int32) *diff[E] {
	sort.Stable(byKey[E]{want, owner})
	return &diff[E]{want: want, owner: owner, held: make([]bool, len(want))}
}

// byKey sorts entries by key, their owners with them.
type byKey[E keyed[E]] struct {
	e     []E
	owner []int32
}

func (s byKey[E]) Len() int           { return len(s.e) }
func (s byKey[E]) Less(i, j int) bool { return s.e[i].compare(s.e[j]) < 0 }
func (s byKey[E]) Swap(i, j int) {
	s.e[i], s.e[j] = s.e[j], s.e[i]
	s.owner[i], s.owner[j] = s.owner[j], s.owner[i]
}

// find returns the index of the wanted entry with e's key (the last one
// given), or -1.
func (d *diff[E]) find(e E) int {
	n := len(d.want)
	i := sort.Search(n, func(i int) bool { return d.want[i].compare(e) > 0 }) - 1
	if i < 0 || d.want[i].compare(e) != 0 {
		return -1
	}
	return i
}

// counts reports whether want[i] is the entry of its key that counts.
func (d *diff[E]) counts(i int) bool {
	return i == len(d.want)-1 || d.want[i].compare(d.want[i+1]) != 0
}

// see records an entry that is there.
func (d *diff[E]) see(have E, owner int32) {
	i := d.find(have)
	switch {
	case i < 0:
		d.del = append(d.del, have)
		d.delBy = append(d.delBy, owner)
	case d.want[i] == have:
		d.held[i] = true
	} // else: wanted with another value; replaced by the add
}

// restart forgets what was seen, for a dump read again.
func (d *diff[E]) restart() {
	clear(d.held)
	d.del, d.delBy = d.del[:0], d.delBy[:0]
}

// adds calls f with each wanted entry that is not there as it is (new or
// changed), once per key.
func (d *diff[E]) adds(f func(e E, owner int32)) {
	for i, e := range d.want {
		if !d.held[i] && d.counts(i) {
			f(e, d.owner[i])
		}
	}
}

// dels calls f with each entry that is there and that nobody wants.
func (d *diff[E]) dels(f func(e E, owner int32)) {
	for i, e := range d.del {
		f(e, d.delBy[i])
	}
}
