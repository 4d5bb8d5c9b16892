package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBackoffGrowsWithJitterUpToMax(t *testing.T) {
	var b Backoff
	var seen []time.Duration
	for range 20 {
		seen = append(seen, b.Next())
	}
	if first := seen[0]; first < 70*time.Millisecond || first > 130*time.Millisecond {
		t.Errorf("first delay %v, want about %v", first, DefaultMin)
	}
	for _, d := range seen {
		if d > DefaultMax*13/10+time.Millisecond {
			t.Errorf("delay %v over the cap %v (+30%% jitter)", d, DefaultMax)
		}
	}
	if last := seen[len(seen)-1]; last < DefaultMax*7/10 {
		t.Errorf("after 20 attempts the delay is %v, want near %v", last, DefaultMax)
	}
	b.Reset()
	if d := b.Next(); d > 130*time.Millisecond {
		t.Errorf("after Reset the delay is %v, want about %v", d, DefaultMin)
	}
}

func TestTwoNodesDoNotRetryInLockstep(t *testing.T) {
	var a, b Backoff
	same := 0
	for range 10 {
		if a.Next() == b.Next() {
			same++
		}
	}
	if same == 10 {
		t.Error("two backoffs gave the same ten delays: no jitter")
	}
}

func TestDoRetriesUntilSuccessAndStopsOnFinalErrors(t *testing.T) {
	ctx := context.Background()
	calls, reports := 0, 0
	err := Do(ctx, &Backoff{Min: time.Millisecond, Max: time.Millisecond}, func(context.Context) error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	}, func(error, int) { reports++ })
	if err != nil || calls != 3 || reports != 2 {
		t.Errorf("Do = %v after %d calls and %d reports; want nil after 3 calls, 2 reports", err, calls, reports)
	}

	final := errors.New("all subnets are taken")
	err = Do(ctx, nil, func(context.Context) error { return Stop(final) }, nil)
	if err != final {
		t.Errorf("Do = %v, want the final error itself", err)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err = Do(cctx, nil, func(context.Context) error { return errors.New("etcd down") }, nil)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Do after cancel = %v, want context.Canceled", err)
	}
}
