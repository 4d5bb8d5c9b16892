// Package retry is weft's one way to wait between attempts: a capped
// exponential backoff with jitter, so that nodes that lost etcd together do
// not come back in lockstep.
package retry

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Defaults of a zero Backoff: the first wait is about Min, each next one
// about 1.6 times longer, never more than about Max.
const (
	DefaultMin = 100 * time.Millisecond
	DefaultMax = 5 * time.Second
)

// Backoff is a capped exponential delay between attempts with ±30 %
// jitter. The zero value is ready to use with DefaultMin and DefaultMax. It
// is not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	b        *backoff.ExponentialBackOff
}

// Next returns the delay before the next attempt.
func (b *Backoff) Next() time.Duration {
	if b.b == nil {
		b.b = &backoff.ExponentialBackOff{
			InitialInterval:     cmp(b.Min, DefaultMin),
			MaxInterval:         cmp(b.Max, DefaultMax),
			Multiplier:          1.6,
			RandomizationFactor: 0.3,
		}
		b.b.Reset()
	}
	return b.b.NextBackOff()
}

// Reset starts the delays from Min again, after a success.
func (b *Backoff) Reset() {
	if b.b != nil {
		b.b.Reset()
	}
}

// Wait sleeps for Next or until ctx ends, and reports whether to go on.
func (b *Backoff) Wait(ctx context.Context) bool {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func cmp(d, dflt time.Duration) time.Duration {
	if d <= 0 {
		return dflt
	}
	return d
}

// stop wraps an error that retrying cannot fix.
type stop struct{ err error }

func (s stop) Error() string { return s.err.Error() }
func (s stop) Unwrap() error { return s.err }

// Stop marks err as final: Do returns it at once instead of retrying.
func Stop(err error) error { return stop{err} }

// Do calls fn until it succeeds or ctx ends, waiting with b in between
// (nil: a zero Backoff). Each failure is passed to report, which decides
// what to log. An error made with Stop ends the attempts and is returned
// unwrapped. Do returns ctx's error if ctx ends first.
func Do(ctx context.Context, b *Backoff, fn func(context.Context) error, report func(err error, attempt int)) error {
	if b == nil {
		b = &Backoff{}
	}
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		var s stop
		if errors.As(err, &s) {
			return s.err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if report != nil {
			report(err, attempt)
		}
		if !b.Wait(ctx) {
			return ctx.Err()
		}
	}
}
