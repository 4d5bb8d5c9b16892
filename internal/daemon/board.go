package daemon

import "sync"

// board is what the daemon itself reports beside its parts: whether it is
// ready, and why not. It is safe for concurrent use.
type board struct {
	mu          sync.Mutex
	ready       bool   // guarded by mu
	notReady    string // guarded by mu; why, when not ready
	configIssue string // guarded by mu; why a new configuration document was refused
}

func (b *board) set(f func(*board)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f(b)
}
