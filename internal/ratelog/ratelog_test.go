package ratelog

import (
	"testing"
	"time"
)

func TestOncePerKeyAndMessage(t *testing.T) {
	var l Limiter
	steps := []struct {
		key, msg string
		want     bool
	}{
		{"100.96.1.0-24", "not JSON", true},
		{"100.96.1.0-24", "not JSON", false}, // the same again: held back
		{"100.96.2.0-24", "not JSON", true},  // another key
		{"100.96.1.0-24", "outside the network", true},
		{"100.96.1.0-24", "outside the network", false},
	}
	for i, s := range steps {
		if got := l.Allow(s.key, s.msg); got != s.want {
			t.Errorf("step %d: Allow(%s, %s) = %t, want %t", i, s.key, s.msg, got, s.want)
		}
	}
	l.Forget("100.96.1.0-24")
	if !l.Allow("100.96.1.0-24", "outside the network") {
		t.Error("a forgotten key is held back")
	}
}

func TestEveryRepeatsAnUnchangedLine(t *testing.T) {
	l := Limiter{Every: 20 * time.Millisecond}
	if !l.Allow("etcd", "unreachable") || l.Allow("etcd", "unreachable") {
		t.Fatal("want the first line and not the second")
	}
	time.Sleep(25 * time.Millisecond)
	if !l.Allow("etcd", "unreachable") {
		t.Error("the line is not repeated after Every")
	}
}

func TestRoundForgetsWhatWasNotReported(t *testing.T) {
	var l Limiter
	l.Allow("a", "bad")
	l.Allow("b", "bad")
	l.Round()
	l.Allow("a", "bad") // still bad in this round; b went away
	l.Round()
	if l.Allow("a", "bad") {
		t.Error("a problem reported in every round is logged again")
	}
	if !l.Allow("b", "bad") {
		t.Error("a problem that went away and came back is not logged again")
	}
}
