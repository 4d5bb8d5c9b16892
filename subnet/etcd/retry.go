package etcd

import (
	"context"
	"errors"
	"time"
)

// backoff is a capped exponential delay between retries of a failed etcd
// call. Its zero value starts at minDelay.
type backoff struct{ next time.Duration }

const (
	minDelay = 100 * time.Millisecond
	maxDelay = 5 * time.Second
)

// wait sleeps for the next delay or until ctx ends, and reports whether to
// go on.
func (b *backoff) wait(ctx context.Context) bool {
	if b.next == 0 {
		b.next = minDelay
	}
	t := time.NewTimer(b.next)
	defer t.Stop()
	b.next = min(2*b.next, maxDelay)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (b *backoff) reset() { b.next = 0 }

// retryStop wraps an error that retrying cannot fix.
type retryStop struct{ err error }

func (r retryStop) Error() string { return r.err.Error() }
func (r retryStop) Unwrap() error { return r.err }

// retry calls fn until it succeeds or ctx ends, sleeping with a capped
// backoff in between. Failures are passed to report, which decides what to
// log. An error wrapped in retryStop ends the retries and is returned
// unwrapped. It returns ctx's error if ctx ends first.
func retry(ctx context.Context, fn func(context.Context) error, report func(err error, attempt int)) error {
	var b backoff
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		var stop retryStop
		if errors.As(err, &stop) {
			return stop.err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		report(err, attempt)
		if !b.wait(ctx) {
			return ctx.Err()
		}
	}
}
