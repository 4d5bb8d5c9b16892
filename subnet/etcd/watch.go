package etcd

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/etcdwatch"
	"github.com/weft-net/weft/internal/retry"
	"github.com/weft-net/weft/subnet"
)

// Watch sends the leases that fit cfg to out until ctx ends: first every
// current lease as Added, then each change (internal/etcdwatch: resumed
// from the last revision after a broken watch, listed again after a
// compaction, nothing sent while etcd is unreachable, so the receiver
// keeps the last known state). A lease that does not parse or does not fit
// cfg is logged once per reason and treated as absent. Watch returns ctx's
// error.
func (s *Store) Watch(ctx context.Context, cfg *subnet.Config, out chan<- []subnet.Event) error {
	return s.WatchFrom(ctx, cfg, out, nil)
}

// WatchFrom is Watch starting from a listing already made (Claim.Listing
// after Acquire), which saves listing every lease again; nil lists.
func (s *Store) WatchFrom(ctx context.Context, cfg *subnet.Config, out chan<- []subnet.Event, listing *Listing) error {
	w := &etcdwatch.Watcher[subnet.Lease]{
		Client: s.cli, Prefix: s.SubnetsPrefix(), What: "lease", Timeout: s.timeout, Log: s.log, Restarts: &s.watchRestarts,
		Decode: func(key string, value []byte) (subnet.Lease, error) {
			l, err := subnet.ParseLease(key, value)
			if err == nil {
				err = cfg.CheckLease(&l)
			}
			return l, err
		},
		Emit: func(ctx context.Context, batch []etcdwatch.Event[subnet.Lease]) error {
			events := make([]subnet.Event, len(batch))
			for i, ev := range batch {
				if ev.Removed {
					v4, v6, _ := subnet.ParseKey(ev.Key) // it parsed when it was added
					events[i] = subnet.Event{Type: subnet.Removed, Lease: subnet.Lease{Subnet: v4, IPv6Subnet: v6}}
					continue
				}
				events[i] = subnet.Event{Type: subnet.Added, Lease: ev.Item, Age: ev.Created}
			}
			select {
			case out <- events:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
	}
	if listing != nil {
		// Leases the listing decoded that do not fit the network.
		for i := range listing.Entries {
			if e := &listing.Entries[i]; e.Err == nil {
				e.Err = cfg.CheckLease(&e.Item)
			}
		}
	}
	return w.Run(ctx, listing)
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
	defer etcdwatch.CancelOnReconnect(wctx, s.cli, cancel)()
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
