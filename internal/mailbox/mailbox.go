// Package mailbox passes the latest of a series of values from one
// goroutine to another: the sender never blocks, and a receiver that falls
// behind skips to the newest value. weftd uses it where only the current
// state matters (an interface snapshot, what the lease should announce).
package mailbox

import "sync"

// Mailbox holds the latest value sent and not yet received. It is safe
// for concurrent use.
type Mailbox[T any] struct {
	mu sync.Mutex // serializes senders
	ch chan T
}

// New returns an empty mailbox.
func New[T any]() *Mailbox[T] { return &Mailbox[T]{ch: make(chan T, 1)} }

// Send replaces whatever value is waiting with v.
func (m *Mailbox[T]) Send(v T) {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.ch:
	default:
	}
	m.ch <- v
}

// C is where the receiver takes the value from.
func (m *Mailbox[T]) C() <-chan T { return m.ch }
