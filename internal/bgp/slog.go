package bgp

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/sirupsen/logrus"
)

// logHandler passes GoBGP's log records (log/slog) to logrus: its warnings
// and errors as they are; its informational lines at debug level, since the
// speaker says itself, once per change, which sessions are up or down and
// why. It also hands the speaker the cause of failed connection attempts,
// which GoBGP only logs (at debug level, per peer).
type logHandler struct {
	entry *logrus.Entry
	attrs map[string]any // accumulated by WithAttrs (GoBGP adds Topic and Key, the peer)
	// connectFailed is called with the peer and the error of a failed
	// connection attempt.
	connectFailed func(peer netip.Addr, err string)
	// drop holds back a record GoBGP logs that the speaker knows to be
	// expected (see Speaker.stop).
	drop func(msg string) bool
}

func (h *logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	fields := make(logrus.Fields, len(h.attrs)+r.NumAttrs())
	for k, v := range h.attrs {
		fields[k] = v
	}
	r.Attrs(func(a slog.Attr) bool {
		fields[a.Key] = a.Value.Resolve().Any()
		return true
	})
	if r.Message == "failed to connect" && h.connectFailed != nil {
		if key, ok := fields["Key"].(string); ok {
			if peer, err := netip.ParseAddr(key); err == nil {
				msg, _ := fields["Error"].(string)
				h.connectFailed(peer, msg)
			}
		}
	}
	if h.drop != nil && h.drop(r.Message) {
		return nil
	}
	e := h.entry.WithFields(fields)
	switch {
	case r.Level >= slog.LevelError:
		e.Error(r.Message)
	case r.Level >= slog.LevelWarn:
		e.Warn(r.Message)
	default:
		e.Debug(r.Message)
	}
	return nil
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	n.attrs = make(map[string]any, len(h.attrs)+len(as))
	for k, v := range h.attrs {
		n.attrs[k] = v
	}
	for _, a := range as {
		n.attrs[a.Key] = a.Value.Resolve().Any()
	}
	return &n
}

// WithGroup is not used by GoBGP; groups are flattened.
func (h *logHandler) WithGroup(string) slog.Handler { return h }
