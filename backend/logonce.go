package backend

import "github.com/sirupsen/logrus"

// LogOnce logs one line per key and reason, so that a peer a backend
// cannot serve is reported once, not on every sync. Not safe for
// concurrent use.
type LogOnce struct {
	logged map[string]string // key -> reason last logged
	seen   map[string]bool   // keys reported during the current sync
}

// Warn logs msg for key unless the same msg was logged for it already.
func (o *LogOnce) Warn(log *logrus.Entry, key, msg string) {
	if o.logged == nil {
		o.logged, o.seen = map[string]string{}, map[string]bool{}
	}
	o.seen[key] = true
	if o.logged[key] == msg {
		return
	}
	o.logged[key] = msg
	log.WithField("peer", key).Warn(msg)
}

// EndSync forgets keys not reported since the previous EndSync, so that a
// problem that comes back is logged again.
func (o *LogOnce) EndSync() {
	for k := range o.logged {
		if !o.seen[k] {
			delete(o.logged, k)
		}
	}
	clear(o.seen)
}
