package subnet

// EventType says what happened to a lease.
type EventType int

const (
	// Added is a new lease, or a lease whose value changed.
	Added EventType = iota
	// Removed is a lease that was deleted, expired, or stopped being valid.
	Removed
)

func (t EventType) String() string {
	if t == Removed {
		return "removed"
	}
	return "added"
}

// Event is a change to the set of leases, keyed by Lease.Key(). A Removed
// event's Lease has only the subnets (the key).
type Event struct {
	Type  EventType
	Lease Lease
	// Age orders the leases by when they were first written: the etcd
	// revision their key was created at, or in Kubernetes mode the Node's
	// creation time (Unix ns); smaller is older, 0 is unknown. Of two
	// leases that claim one VTEP MAC, the older keeps it.
	Age int64
}
