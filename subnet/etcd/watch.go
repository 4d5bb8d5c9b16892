package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"

	"github.com/weft-net/weft/internal/ratelog"
	"github.com/weft-net/weft/internal/retry"
	"github.com/weft-net/weft/subnet"
)

// Watch sends the leases that fit cfg to out until ctx ends: first every
// current lease as Added, then each change. It lists once and watches from
// the next revision; a broken watch is resumed from the last revision seen;
// after a compaction it lists again and sends only the difference. While
// etcd is unreachable it retries with a capped backoff and sends nothing,
// so the receiver keeps the last known state. A lease that does not parse
// or does not fit cfg is logged once and treated as absent. Watch returns
// ctx's error.
func (s *Store) Watch(ctx context.Context, cfg *subnet.Config, out chan<- []subnet.Event) error {
	return s.WatchFrom(ctx, cfg, out, nil)
}

// WatchFrom is Watch starting from a listing already made (Claim.Listing
// after Acquire), which saves listing every lease again; nil lists.
func (s *Store) WatchFrom(ctx context.Context, cfg *subnet.Config, out chan<- []subnet.Event, listing *Listing) error {
	w := &watcher{store: s, cfg: cfg, out: out, known: map[string]int64{}}
	if listing != nil {
		if err := w.relisted(ctx, listing); err != nil {
			return err
		}
	}
	return w.run(ctx)
}

// watcher is the state of one Watch call; it is used by one goroutine.
type watcher struct {
	store *Store
	cfg   *subnet.Config
	out   chan<- []subnet.Event
	// known holds the mod revision of each valid lease sent as Added, by
	// key: enough to tell, after listing again, what changed. The receiver
	// keeps the leases themselves.
	known map[string]int64
	// bad logs each invalid key once per reason.
	bad ratelog.Limiter
	rev int64 // last revision seen; 0 means list again
}

func (w *watcher) run(ctx context.Context) error {
	s := w.store
	var b retry.Backoff
	for {
		if w.rev == 0 {
			var listing *Listing
			err := s.retryLogged(ctx, "listing leases", func(ctx context.Context) (err error) {
				listing, err = s.List(ctx)
				return err
			})
			if err != nil {
				return err
			}
			if err := w.relisted(ctx, listing); err != nil {
				return err
			}
		}
		err := w.follow(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.watchRestarts.Add(1)
		if errors.Is(err, rpctypes.ErrCompacted) {
			s.log.WithField("revision", w.rev).Info("lease history was compacted; listing again")
			w.rev = 0
			b.Reset()
			continue
		}
		s.log.WithError(err).WithField("revision", w.rev).Warn("lease watch broken; resuming")
		if !b.Wait(ctx) {
			return ctx.Err()
		}
	}
}

// follow watches from w.rev+1 and returns why the watch ended.
func (w *watcher) follow(ctx context.Context) error {
	s := w.store
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer s.cancelOnReconnect(wctx, cancel)()
	ch := s.cli.Watch(wctx, s.SubnetsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(w.rev+1))
	for resp := range ch {
		if resp.CompactRevision != 0 {
			return rpctypes.ErrCompacted
		}
		if err := resp.Err(); err != nil {
			return err
		}
		var batch []subnet.Event
		for _, ev := range resp.Events {
			key := strings.TrimPrefix(string(ev.Kv.Key), s.SubnetsPrefix())
			if ev.Type == clientv3.EventTypeDelete {
				batch = w.remove(batch, key)
				continue
			}
			batch = w.update(batch, key, ev.Kv.Value, ev.Kv.ModRevision)
		}
		w.rev = resp.Header.Revision
		if err := w.send(ctx, batch); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("watch channel closed")
}

// relisted sends the difference between what was known and listing.
func (w *watcher) relisted(ctx context.Context, listing *Listing) error {
	var batch []subnet.Event
	present := make(map[string]bool, len(listing.Entries))
	for _, e := range listing.Entries {
		present[e.Key] = true
		if e.Err != nil {
			batch = w.invalid(batch, e.Key, e.Err)
			continue
		}
		batch = w.valid(batch, e.Key, e.Lease, e.ModRevision)
	}
	for key := range w.known {
		if !present[key] {
			batch = w.remove(batch, key)
		}
	}
	w.bad.Round() // forgets invalid keys that are gone
	w.rev = listing.Revision
	if batch == nil {
		// The first listing is sent even when empty, so that the receiver
		// knows it has the whole picture.
		batch = []subnet.Event{}
	}
	return w.send(ctx, batch)
}

func (w *watcher) update(batch []subnet.Event, key string, value []byte, rev int64) []subnet.Event {
	l, err := subnet.ParseLease(key, value)
	if err != nil {
		return w.invalid(batch, key, err)
	}
	return w.valid(batch, key, l, rev)
}

func (w *watcher) valid(batch []subnet.Event, key string, l subnet.Lease, rev int64) []subnet.Event {
	if err := w.cfg.CheckLease(&l); err != nil {
		return w.invalid(batch, key, err)
	}
	w.bad.Forget(key)
	if w.known[key] == rev {
		return batch // unchanged since it was sent
	}
	w.known[key] = rev
	return append(batch, subnet.Event{Type: subnet.Added, Lease: l})
}

// invalid logs a lease that cannot be used, once per distinct problem, and
// withdraws it if it was valid before.
func (w *watcher) invalid(batch []subnet.Event, key string, err error) []subnet.Event {
	if w.bad.Allow(key, err.Error()) {
		w.store.log.WithFields(logrus.Fields{"key": w.store.SubnetsPrefix() + key}).WithError(err).Warn("ignoring invalid lease")
	}
	if _, ok := w.known[key]; ok {
		return w.remove(batch, key)
	}
	return batch
}

func (w *watcher) remove(batch []subnet.Event, key string) []subnet.Event {
	w.bad.Forget(key)
	if _, ok := w.known[key]; !ok {
		return batch
	}
	delete(w.known, key)
	v4, v6, _ := subnet.ParseKey(key) // it parsed when it was added
	return append(batch, subnet.Event{Type: subnet.Removed, Lease: subnet.Lease{Subnet: v4, IPv6Subnet: v6}})
}

func (w *watcher) send(ctx context.Context, batch []subnet.Event) error {
	if batch == nil {
		return nil
	}
	select {
	case w.out <- batch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// WatchConfig calls f with the configuration document now and each time
// it is written, on its own goroutine, until ctx ends; it returns ctx's
// error. A broken watch is resumed after reading the key again, so no
// change is missed.
func (s *Store) WatchConfig(ctx context.Context, f func(doc []byte)) error {
	var b retry.Backoff
	for {
		var rev int64
		err := s.retryLogged(ctx, "reading the network configuration", func(ctx context.Context) error {
			cctx, cancel := s.call(ctx)
			defer cancel()
			resp, err := s.cli.Get(cctx, s.ConfigKey())
			if err != nil {
				return err
			}
			rev = resp.Header.Revision
			if len(resp.Kvs) > 0 {
				f(resp.Kvs[0].Value)
			}
			return nil
		})
		if err != nil {
			return err
		}
		s.followConfig(ctx, rev, f)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !b.Wait(ctx) {
			return ctx.Err()
		}
	}
}

// followConfig calls f with each write of the configuration after rev
// until the watch breaks or ctx ends.
func (s *Store) followConfig(ctx context.Context, rev int64, f func(doc []byte)) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer s.cancelOnReconnect(wctx, cancel)()
	for resp := range s.cli.Watch(wctx, s.ConfigKey(), clientv3.WithRev(rev+1)) {
		if resp.Err() != nil {
			return
		}
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypePut {
				f(ev.Kv.Value)
			}
		}
	}
}

// cancelOnReconnect starts a goroutine that calls cancel when the
// connection to etcd comes back after it was lost, so that the caller
// starts its watch again from the last revision it saw. The etcd client
// resumes watches by itself, but a stream that went quiet across a long
// outage was seen never to deliver again; restarting costs one request per
// reconnection and nothing in steady state. The goroutine ends with ctx;
// the function returned cancels ctx and waits for it.
func (s *Store) cancelOnReconnect(ctx context.Context, cancel context.CancelFunc) (stop func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn := s.cli.ActiveConnection()
		state := conn.GetState()
		lost := false
		for conn.WaitForStateChange(ctx, state) {
			state = conn.GetState()
			switch {
			case state != connectivity.Ready:
				lost = true
			case lost:
				cancel()
				return
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
