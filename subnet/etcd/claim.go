package etcd

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/ratelog"
	"github.com/weft-net/weft/subnet"
)

// Claim is a subnet this node holds in etcd. Keep holds on to it. Its
// methods are safe for concurrent use.
type Claim struct {
	store *Store
	log   *logrus.Entry

	mu sync.Mutex
	// listing is the listing Acquire decided on; Watch can start from it
	// instead of listing again.
	listing *Listing         // guarded by mu
	lease   subnet.Lease     // guarded by mu
	id      clientv3.LeaseID // guarded by mu
	problem error            // guarded by mu; why the claim is not healthy
	expires time.Time        // guarded by mu; per the last grant or keep-alive answer
	// fresh: Acquire created the key for a subnet this node did not have
	// before (neither its key nor its subnet.env named it).
	fresh bool
}

// Lease returns the lease held.
func (c *Claim) Lease() subnet.Lease {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lease
}

// EtcdLease returns the etcd lease the key is attached to now.
func (c *Claim) EtcdLease() clientv3.LeaseID {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.id
}

// TakeListing returns every lease as Acquire saw them, for
// Store.WatchFrom, once: the claim does not keep it.
func (c *Claim) TakeListing() *Listing {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.listing
	c.listing = nil
	return l
}

// TTL returns how long the etcd lease has left as of its last renewal,
// without asking etcd.
func (c *Claim) TTL() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return max(time.Until(c.expires), 0)
}

func (c *Claim) renewed(ttl time.Duration) {
	c.mu.Lock()
	c.expires = time.Now().Add(ttl)
	c.mu.Unlock()
}

// Problem returns why the claim is not in good standing (its etcd lease was
// lost and the key is held by another node, say), or nil.
func (c *Claim) Problem() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.problem
}

func (c *Claim) setProblem(err error) {
	c.mu.Lock()
	c.problem = err
	c.mu.Unlock()
}

// Keep keeps the claim's etcd lease alive until ctx ends. If the lease is
// lost (it expired while etcd was unreachable) or the key is deleted, Keep
// re-creates the same subnet. If another node took the subnet meanwhile,
// Keep never switches subnets under running pods: it logs the conflict
// loudly, reports it through Problem, and keeps trying. Keep returns when
// ctx ends; it does not release the subnet, so that a restarted daemon gets
// it back.
func (c *Claim) Keep(ctx context.Context) {
	for ctx.Err() == nil {
		c.holdUntilLost(ctx)
		if ctx.Err() != nil {
			return
		}
		c.retake(ctx)
	}
}

// holdUntilLost keeps the etcd lease alive and returns when it is lost or
// the key is deleted (or ctx ends).
func (c *Claim) holdUntilLost(ctx context.Context) {
	s := c.store
	id := c.EtcdLease()
	key := s.SubnetsPrefix() + c.Lease().Key()
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ka, err := s.cli.KeepAlive(hctx, id)
	if err != nil {
		c.log.WithError(err).Warn("cannot keep the etcd lease alive")
		return
	}
	watch := s.cli.Watch(clientv3.WithRequireLeader(hctx), key)
	for {
		select {
		case <-ctx.Done():
			return
		case resp, ok := <-ka:
			if ok && resp != nil {
				c.renewed(time.Duration(resp.TTL) * time.Second)
			}
			if !ok {
				c.logExpired(id)
				return
			}
		case resp, ok := <-watch:
			if !ok || resp.Err() != nil {
				// Keep-alive still guards the lease; restart the watch.
				watch = s.cli.Watch(clientv3.WithRequireLeader(hctx), key)
				continue
			}
			for _, ev := range resp.Events {
				switch {
				case ev.Type == clientv3.EventTypeDelete && s.leaseGone(hctx, id):
					c.logExpired(id)
					return
				case ev.Type == clientv3.EventTypeDelete:
					c.log.WithField("subnet", c.Lease().Key()).Warn("this node's lease was deleted from etcd; re-creating it")
					return
				case clientv3.LeaseID(ev.Kv.Lease) != id:
					c.log.WithField("subnet", c.Lease().Key()).Warn("this node's lease was overwritten in etcd; taking it back")
					return
				}
			}
		}
	}
}

// logExpired says that the etcd lease id expired, which is all that is
// known: this process did not renew it in time.
func (c *Claim) logExpired(id clientv3.LeaseID) {
	c.log.WithFields(logrus.Fields{"subnet": c.Lease().Key(), "etcd_lease": fmt.Sprintf("%x", int64(id))}).
		Warn("etcd lease expired: this weftd did not renew it within its TTL (it was stopped or cut off from etcd); re-creating the same subnet")
}

// leaseGone reports whether the etcd lease id has expired (or was
// revoked).
func (s *Store) leaseGone(ctx context.Context, id clientv3.LeaseID) bool {
	ttl, err := s.TTL(ctx, id)
	return err == nil && ttl == 0
}

// retake re-creates the claim's key with a fresh etcd lease, retrying until
// it succeeds or ctx ends.
func (c *Claim) retake(ctx context.Context) {
	s := c.store
	l := c.Lease()
	key := s.SubnetsPrefix() + l.Key()
	value, err := json.Marshal(l.Attrs)
	if err != nil {
		c.log.WithError(err).Error("encoding lease value")
		return
	}
	conflicts := ratelog.Limiter{Every: 30 * time.Second}
	// It returns only when it succeeds or ctx ends.
	_ = s.retryLogged(ctx, "re-creating this node's lease", func(ctx context.Context) error {
		cctx, cancel := s.call(ctx)
		defer cancel()
		g, err := s.cli.Grant(cctx, int64(s.ttl/time.Second))
		if err != nil {
			return fmt.Errorf("granting an etcd lease: %w", err)
		}
		resp, err := s.cli.Txn(cctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(value), clientv3.WithLease(g.ID))).
			Else(clientv3.OpGet(key)).Commit()
		if err != nil {
			s.revoke(g.ID)
			return fmt.Errorf("re-creating lease %s: %w", key, err)
		}
		if !resp.Succeeded {
			kvs := resp.Responses[0].GetResponseRange().Kvs
			holder, perr := subnet.ParseLease(l.Key(), kvs[0].Value)
			if perr == nil && isMine(&holder.Attrs, &l.Attrs) {
				// Our own key under an etcd lease we no longer keep alive:
				// move it to the new one.
				modRev := kvs[0].ModRevision
				r, err := s.cli.Txn(cctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
					Then(clientv3.OpPut(key, string(value), clientv3.WithLease(g.ID))).Commit()
				if err == nil && r.Succeeded {
					c.retaken(g.ID)
					return nil
				}
			}
			s.revoke(g.ID)
			err := fmt.Errorf("subnet %s, which this node's pods use, is now leased by another node (%s %s); not switching subnets under running pods",
				l.Key(), holder.Node, holder.PublicIP)
			c.setProblem(err)
			if conflicts.Allow(l.Key(), err.Error()) {
				c.log.WithError(err).Error("subnet conflict")
			}
			return err
		}
		c.retaken(g.ID)
		return nil
	})
}

func (c *Claim) retaken(id clientv3.LeaseID) {
	c.mu.Lock()
	c.id = id
	c.problem = nil
	c.expires = time.Now().Add(c.store.ttl)
	c.mu.Unlock()
	c.log.WithFields(logrus.Fields{"subnet": c.Lease().Key(), "etcd_lease": fmt.Sprintf("%x", int64(id))}).Info("lease re-created")
}

// Release deletes the claim's key, if it is still this claim's, and revokes
// its etcd lease. weftd does not call it on shutdown: a restarted node
// should find its subnet again.
func (c *Claim) Release(ctx context.Context) error {
	s := c.store
	id := c.EtcdLease()
	key := s.SubnetsPrefix() + c.Lease().Key()
	cctx, cancel := s.call(ctx)
	defer cancel()
	if _, err := s.cli.Txn(cctx).If(clientv3.Compare(clientv3.LeaseValue(key), "=", id)).Then(clientv3.OpDelete(key)).Commit(); err != nil {
		return fmt.Errorf("deleting lease %s: %w", key, err)
	}
	if _, err := s.cli.Revoke(cctx, id); err != nil {
		return fmt.Errorf("revoking etcd lease %x: %w", int64(id), err)
	}
	return nil
}

// Abandon gives the lease back if Acquire created it for a subnet this
// node did not have before, so that a node that cannot start (subnet.env
// cannot be written) leaves no lease behind; a subnet the node had before
// is kept for its pods.
func (c *Claim) Abandon(ctx context.Context) error {
	if !c.fresh {
		return nil
	}
	return c.Release(ctx)
}

// Update publishes new attributes on the claim's key (a backend switch),
// keeping its subnet and etcd lease. It fails if the key is not attached to
// the claim's etcd lease right now (Keep is re-creating it); call it again.
func (c *Claim) Update(ctx context.Context, attrs subnet.Attrs) error {
	s := c.store
	value, err := json.Marshal(attrs)
	if err != nil {
		return fmt.Errorf("encoding lease value: %w", err)
	}
	c.mu.Lock()
	id, key := c.id, s.SubnetsPrefix()+c.lease.Key()
	c.mu.Unlock()
	cctx, cancel := s.call(ctx)
	defer cancel()
	resp, err := s.cli.Txn(cctx).If(clientv3.Compare(clientv3.LeaseValue(key), "=", id)).
		Then(clientv3.OpPut(key, string(value), clientv3.WithLease(id))).Commit()
	if err != nil {
		return fmt.Errorf("updating lease %s: %w", key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("updating lease %s: the key is not held by etcd lease %x right now", key, int64(id))
	}
	c.mu.Lock()
	c.lease.Attrs = attrs
	c.mu.Unlock()
	c.log.WithFields(logrus.Fields{"subnet": c.Lease().Key(), "backend": attrs.BackendType}).Info("lease updated")
	return nil
}
