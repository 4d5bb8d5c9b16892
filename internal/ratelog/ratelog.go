// Package ratelog is weft's one rate-limited logger: it keeps a problem that
// repeats (a bad lease seen on every change, etcd unreachable on every
// retry) to one log line per key and message, or one every so often.
package ratelog

import (
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// Limiter decides which repeated lines are logged. A line for a key is
// logged when its message differs from the last one logged for that key,
// or, with Every set, when Every has passed since then. The zero value logs
// each key and message once. It is safe for concurrent use.
type Limiter struct {
	// Every, if set, repeats an unchanged line this often.
	Every time.Duration

	mu   sync.Mutex
	last map[string]line // guarded by mu
}

type line struct {
	msg  string
	at   time.Time
	seen bool // reported since the last Round
}

// Allow reports whether the line msg for key should be logged now, and if
// so records that it was.
func (l *Limiter) Allow(key, msg string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last = map[string]line{}
	}
	now := time.Now()
	prev, ok := l.last[key]
	allow := !ok || prev.msg != msg || l.Every > 0 && now.Sub(prev.at) >= l.Every
	if allow {
		prev = line{msg: msg, at: now}
	}
	prev.seen = true
	l.last[key] = prev
	return allow
}

// Log logs entry at level with msg unless the limiter holds it back.
func (l *Limiter) Log(entry *logrus.Entry, level logrus.Level, key, msg string) {
	if l.Allow(key, msg) {
		entry.Log(level, msg)
	}
}

// Warn is Log at warning level.
func (l *Limiter) Warn(entry *logrus.Entry, key, msg string) {
	l.Log(entry, logrus.WarnLevel, key, msg)
}

// Forget drops what was logged for key, so that its next line is logged.
func (l *Limiter) Forget(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.last, key)
}

// Round ends a round of reports (a full sync, a listing): keys not
// reported since the previous Round are forgotten, so that a problem that
// goes away and comes back is logged again.
func (l *Limiter) Round() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, v := range l.last {
		if !v.seen {
			delete(l.last, k)
			continue
		}
		v.seen = false
		l.last[k] = v
	}
}
