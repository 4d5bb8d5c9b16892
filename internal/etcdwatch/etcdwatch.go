// Package etcdwatch follows every key under an etcd prefix, for the lease
// store (subnet/etcd) and the service store (service/etcd): one listing,
// then a watch from the next revision; a broken watch resumes from the
// last revision seen; after a compaction it lists again and reports only
// the difference. While etcd is unreachable it retries and reports nothing,
// so the receiver keeps the last known state.
package etcdwatch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"

	"github.com/weft-net/weft/internal/ratelog"
	"github.com/weft-net/weft/internal/retry"
)

// Entry is one key as listed, decoded.
type Entry[T any] struct {
	Key         string // below the prefix
	Item        T
	Err         error // why the value could not be decoded; Item is zero then
	ModRevision int64
	// Created is the revision the key was created at: older keys win
	// conflicts (service/Admit).
	Created int64
	// Lease is the etcd lease the key is attached to (0: none).
	Lease clientv3.LeaseID
}

// Listing is every key under a prefix at one revision.
type Listing[T any] struct {
	Entries  []Entry[T]
	Revision int64
}

// PageSize is how many keys List reads per request.
const PageSize = 1000

// List reads every key under prefix, in pages of PageSize at the revision
// of the first page, so that neither etcd nor weft holds a large listing in
// one response, decoding each value with decode. timeout bounds each
// request.
func List[T any](ctx context.Context, cli *clientv3.Client, prefix string, timeout time.Duration, decode func(key string, value []byte) (T, error)) (*Listing[T], error) {
	l := &Listing[T]{}
	from, end := prefix, clientv3.GetPrefixRangeEnd(prefix)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(PageSize)}
		if l.Revision != 0 {
			opts = append(opts, clientv3.WithRev(l.Revision))
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		resp, err := cli.Get(cctx, from, opts...)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("listing %s in etcd %v: %w", prefix, cli.Endpoints(), err)
		}
		if l.Revision == 0 {
			l.Revision = resp.Header.Revision
			l.Entries = make([]Entry[T], 0, resp.Count)
		}
		for _, kv := range resp.Kvs {
			key := strings.TrimPrefix(string(kv.Key), prefix)
			e := Entry[T]{Key: key, ModRevision: kv.ModRevision, Created: kv.CreateRevision, Lease: clientv3.LeaseID(kv.Lease)}
			e.Item, e.Err = decode(key, kv.Value)
			l.Entries = append(l.Entries, e)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return l, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Event is a change of one key: a new or changed valid item, or, with
// Removed, one deleted or no longer valid (Item is zero then).
type Event[T any] struct {
	Key     string
	Removed bool
	Item    T
	// Created is the revision the key was created at.
	Created int64
}

// Watcher follows one prefix. Its fields are set before Run.
type Watcher[T any] struct {
	Client *clientv3.Client
	Prefix string
	// What names the keys in log lines ("lease").
	What    string
	Timeout time.Duration
	// Decode turns a key (below Prefix) and its value into an item, or
	// says why the key cannot be used: it is then logged once per reason
	// and treated as absent.
	Decode func(key string, value []byte) (T, error)
	// Emit takes a batch of events; the first is the whole listing (sent
	// even when empty). It returns an error only when ctx ended.
	Emit func(ctx context.Context, batch []Event[T]) error
	Log  *logrus.Entry
	// Restarts counts how often the watch had to be established again.
	Restarts *atomic.Uint64

	// known holds the mod revision of each valid key emitted: enough to
	// tell, after listing again, what changed. The receiver keeps the
	// items themselves.
	known map[string]int64
	bad   ratelog.Limiter // each invalid key once per reason
	tries ratelog.Limiter // etcd unreachable, every few seconds
	rev   int64           // last revision seen; 0 means list again
}

// Run emits the listing (from, if not nil, else a new one) and then every
// change, until ctx ends; it returns ctx's error.
func (w *Watcher[T]) Run(ctx context.Context, from *Listing[T]) error {
	w.known = map[string]int64{}
	w.tries.Every = 5 * time.Second
	if w.Restarts == nil {
		w.Restarts = new(atomic.Uint64)
	}
	if from != nil {
		if err := w.relisted(ctx, from); err != nil {
			return err
		}
	}
	var b retry.Backoff
	for {
		if w.rev == 0 {
			var listing *Listing[T]
			err := retry.Do(ctx, nil, func(ctx context.Context) (err error) {
				listing, err = List(ctx, w.Client, w.Prefix, w.Timeout, w.Decode)
				return err
			}, func(err error, attempt int) {
				if w.tries.Allow("list", "failed") {
					w.Log.WithFields(logrus.Fields{"endpoints": w.Client.Endpoints(), "attempt": attempt}).WithError(err).Warnf("listing %ss failed; retrying", w.What)
				}
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
		w.Restarts.Add(1)
		if errors.Is(err, rpctypes.ErrCompacted) {
			w.Log.WithField("revision", w.rev).Infof("%s history was compacted; listing again", w.What)
			w.rev = 0
			b.Reset()
			continue
		}
		w.Log.WithError(err).WithField("revision", w.rev).Warnf("%s watch broken; resuming", w.What)
		if !b.Wait(ctx) {
			return ctx.Err()
		}
	}
}

// follow watches from w.rev+1 and returns why the watch ended.
func (w *Watcher[T]) follow(ctx context.Context) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer CancelOnReconnect(wctx, w.Client, cancel)()
	ch := w.Client.Watch(wctx, w.Prefix, clientv3.WithPrefix(), clientv3.WithRev(w.rev+1))
	for resp := range ch {
		if resp.CompactRevision != 0 {
			return rpctypes.ErrCompacted
		}
		if err := resp.Err(); err != nil {
			return err
		}
		var batch []Event[T]
		for _, ev := range resp.Events {
			key := strings.TrimPrefix(string(ev.Kv.Key), w.Prefix)
			if ev.Type == clientv3.EventTypeDelete {
				batch = w.remove(batch, key)
				continue
			}
			item, err := w.Decode(key, ev.Kv.Value)
			if err != nil {
				batch = w.invalid(batch, key, err)
				continue
			}
			batch = w.valid(batch, key, item, ev.Kv.ModRevision, ev.Kv.CreateRevision)
		}
		w.rev = resp.Header.Revision
		if batch != nil {
			if err := w.Emit(ctx, batch); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("watch channel closed")
}

// relisted emits the difference between what was known and listing.
func (w *Watcher[T]) relisted(ctx context.Context, listing *Listing[T]) error {
	var batch []Event[T]
	present := make(map[string]bool, len(listing.Entries))
	for _, e := range listing.Entries {
		present[e.Key] = true
		if e.Err != nil {
			batch = w.invalid(batch, e.Key, e.Err)
			continue
		}
		batch = w.valid(batch, e.Key, e.Item, e.ModRevision, e.Created)
	}
	for key := range w.known {
		if !present[key] {
			batch = w.remove(batch, key)
		}
	}
	w.bad.Round() // forgets invalid keys that are gone
	w.rev = listing.Revision
	if batch == nil {
		// The first listing is emitted even when empty, so that the
		// receiver knows it has the whole picture.
		batch = []Event[T]{}
	}
	return w.Emit(ctx, batch)
}

func (w *Watcher[T]) valid(batch []Event[T], key string, item T, rev, created int64) []Event[T] {
	w.bad.Forget(key)
	if w.known[key] == rev {
		return batch // unchanged since it was emitted
	}
	w.known[key] = rev
	return append(batch, Event[T]{Key: key, Item: item, Created: created})
}

// invalid logs a key that cannot be used, once per reason, and withdraws
// it if it was valid before.
func (w *Watcher[T]) invalid(batch []Event[T], key string, err error) []Event[T] {
	if w.bad.Allow(key, err.Error()) {
		w.Log.WithField("key", w.Prefix+key).WithError(err).Warnf("ignoring invalid %s", w.What)
	}
	if _, ok := w.known[key]; ok {
		delete(w.known, key)
		return append(batch, Event[T]{Key: key, Removed: true})
	}
	return batch
}

func (w *Watcher[T]) remove(batch []Event[T], key string) []Event[T] {
	w.bad.Forget(key)
	if _, ok := w.known[key]; !ok {
		return batch
	}
	delete(w.known, key)
	return append(batch, Event[T]{Key: key, Removed: true})
}

// CancelOnReconnect starts a goroutine that calls cancel when cli's
// connection to etcd comes back after it was lost, so that the caller
// starts its watch again from the last revision it saw. The etcd client
// resumes watches by itself, but a stream that went quiet across a long
// outage was seen never to deliver again; restarting costs one request per
// reconnection and nothing in steady state. The goroutine ends with ctx;
// the function returned cancels ctx and waits for it.
func CancelOnReconnect(ctx context.Context, cli *clientv3.Client, cancel context.CancelFunc) (stop func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn := cli.ActiveConnection()
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
