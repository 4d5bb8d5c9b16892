package kernel

// keyed is a kind of kernel entry: a route is identified by its
// destination, a neighbour entry by device and address, an FDB entry by
// device and MAC. Two entries with the same key and different values are
// one entry that changed.
type keyed[K comparable] interface {
	comparable
	key() K
}

// diff compares what is there with what is wanted, for one kind of entry.
// What is there arrives one entry at a time (see), from a kernel dump as
// it streams in or from the entries of peers before a change; diff holds
// no copy of it. Each wanted entry has an owner (a peer), each entry seen
// may have one, so that a failure can be laid at a peer's door. It is pure.
type diff[K comparable, E keyed[K]] struct {
	want  []E
	owner []int32
	idx   map[K]int32 // the last wanted entry of each key
	held  []bool      // want[i] is there as it is
	del   []E         // entries there whose key nobody wants
	delBy []int32     // the owner of each of del, or -1
}

// noOwner marks an entry no peer owns (one read from the kernel).
const noOwner = -1

func newDiff[K comparable, E keyed[K]](want []E, owner []int32) *diff[K, E] {
	d := &diff[K, E]{want: want, owner: owner, idx: make(map[K]int32, len(want)), held: make([]bool, len(want))}
	for i, e := range want {
		d.idx[e.key()] = int32(i)
	}
	return d
}

// see records an entry that is there.
func (d *diff[K, E]) see(have E, owner int32) {
	i, ok := d.idx[have.key()]
	switch {
	case !ok:
		d.del = append(d.del, have)
		d.delBy = append(d.delBy, owner)
	case d.want[i] == have:
		d.held[i] = true
	} // else: wanted with another value; replaced by the add
}

// restart forgets what was seen, for a dump read again.
func (d *diff[K, E]) restart() {
	clear(d.held)
	d.del, d.delBy = d.del[:0], d.delBy[:0]
}

// adds calls f with each wanted entry that is not there as it is (new or
// changed), once per key.
func (d *diff[K, E]) adds(f func(e E, owner int32)) {
	for i, e := range d.want {
		if !d.held[i] && d.idx[e.key()] == int32(i) {
			f(e, d.owner[i])
		}
	}
}

// dels calls f with each entry that is there and that nobody wants.
func (d *diff[K, E]) dels(f func(e E, owner int32)) {
	for i, e := range d.del {
		f(e, d.delBy[i])
	}
}
