package daemon

import (
	"testing"
	"time"

	"github.com/weft-net/weft/internal/reconcile"
)

// A node whose syncs keep failing (a peer the kernel refuses) says so in
// /readyz and weftctl status once three resyncs have failed in a row; one
// failed sync among good ones does not make it unready.
func TestSyncsFailingForLongMakeTheNodeUnready(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	limit := failingLimit(5 * time.Second)
	for _, tc := range []struct {
		name  string
		since time.Time
		want  string
	}{
		{"last sync succeeded", time.Time{}, ""},
		{"failing for one resync", now.Add(-5 * time.Second), ""},
		{"failing for three resyncs", now.Add(-15 * time.Second), "every sync has failed for 15s: peer 100.96.9.0-24: file exists"},
	} {
		rs := reconcile.Status{FailingSince: tc.since, LastSyncErr: "peer 100.96.9.0-24: file exists"}
		if got := failing(rs, now, limit); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// /healthz fails only when the sync loop is stuck, not while weftd waits
// for etcd (the loop has not started) or between resyncs.
func TestHealthzFailsOnlyWhenTheSyncLoopIsStuck(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	resync := 5 * time.Second
	for _, tc := range []struct {
		name string
		last time.Time
		want string
	}{
		{"loop not started (waiting for etcd)", time.Time{}, ""},
		{"came round a resync ago", now.Add(-resync), ""},
		{"a minute late", now.Add(-70 * time.Second), ""},
		{"stuck", now.Add(-10 * time.Minute), "the sync loop has not come round for 10m0s (it should every 5s)"},
	} {
		if got := stuck(tc.last, now, resync); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
