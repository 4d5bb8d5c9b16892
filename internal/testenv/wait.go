package testenv

import (
	"strings"
	"testing"
	"time"
)

// Eventually polls cond every 50 ms until it holds, and fails t if d passes
// first, saying what it waited for and the last state cond described.
func Eventually(t testing.TB, d time.Duration, what string, cond func() (ok bool, state string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s; last state:\n%s", d, what, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Tail returns the last n bytes of b (a log), trimmed.
func Tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
