package daemon

import (
	"strconv"
	"strings"
	"sync"
)

// board is what the daemon itself reports beside its parts: whether it is
// ready, and why not. It is safe for concurrent use. It tells systemd
// (see notify.go) whenever that changes: STATUS= with the reason, and,
// while starting, EXTEND_TIMEOUT_USEC= so that a start which keeps making
// progress is not killed at TimeoutStartSec.
type board struct {
	mu          sync.Mutex
	ready       bool   // guarded by mu
	notReady    string // guarded by mu; why, when not ready
	configIssue string // guarded by mu; why a new configuration document was refused
	told        string // guarded by mu (written under telling too); the status systemd was last sent
	stopping    bool   // guarded by mu (written under telling too); STOPPING=1 was sent: no status follows

	// telling is held while a notification is sent, and taken before mu,
	// never while holding it: a reader of the board (/readyz) never waits
	// for systemd, and systemd hears the changes in the order they were
	// made.
	telling sync.Mutex
}

// set changes the board with f under its lock; f may also only read it.
// If that changed the status, set tells systemd before it returns.
func (b *board) set(f func(*board)) {
	b.mu.Lock()
	f(b)
	changed := !b.stopping && b.statusLocked() != b.told
	b.mu.Unlock()
	if changed {
		b.tell()
	}
}

// tell sends systemd the board's status as it is now, unless systemd was
// already told it. Changes made meanwhile are sent together.
func (b *board) tell() {
	b.telling.Lock()
	defer b.telling.Unlock()
	b.mu.Lock()
	status, ready := b.statusLocked(), b.ready
	if b.stopping || status == b.told {
		b.mu.Unlock()
		return
	}
	b.told = status
	b.mu.Unlock()
	msg := "STATUS=" + status
	if !ready {
		msg += "\nEXTEND_TIMEOUT_USEC=" + strconv.FormatInt(startExtension.Microseconds(), 10)
	}
	// The status is advisory and the next change replaces it: a failure is
	// not worth a log line each time. That of READY=1 is logged where it
	// is sent.
	_ = notifySystemd(msg)
}

// stop tells systemd that weftd is stopping (STOPPING=1); the board sends
// nothing after it. It may be called more than once.
func (b *board) stop() {
	b.telling.Lock()
	defer b.telling.Unlock()
	b.mu.Lock()
	already := b.stopping
	b.stopping = true
	b.mu.Unlock()
	if !already {
		_ = notifySystemd("STOPPING=1\nSTATUS=stopping")
	}
}

// statusLocked is the status systemd shows: why the node is not ready, or
// that it is, with the configuration document it refused if any. It is
// one line, as the notification protocol needs.
func (b *board) statusLocked() string {
	status := b.notReady
	if b.ready {
		status = "ready"
		if b.configIssue != "" {
			status += "; " + b.configIssue
		}
	}
	return strings.ReplaceAll(status, "\n", " ")
}
