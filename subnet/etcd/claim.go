package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/subnet"
)

// AcquireRequest says which node asks for a subnet and what it publishes.
type AcquireRequest struct {
	Config *subnet.Config
	// Attrs is the lease value to publish: Node, public addresses, backend.
	Attrs subnet.Attrs
	// Previous is the subnet (and IPv6 subnet) this node had before, from
	// its subnet.env; used if it is still free and inside the network.
	Previous, PreviousIPv6 netip.Prefix
}

func (r *AcquireRequest) validate() error {
	if r.Config == nil {
		return errors.New("acquiring a subnet: no network configuration")
	}
	if r.Config.IPv4.Enabled() && !r.Attrs.PublicIP.Is4() {
		return errors.New("acquiring a subnet: the network is IPv4 but the node has no public IPv4 address")
	}
	if r.Config.IPv6.Enabled() && !r.Attrs.PublicIPv6.Is6() {
		return errors.New("acquiring a subnet: the network is IPv6 but the node has no public IPv6 address")
	}
	return nil
}

// Claim is a subnet this node holds in etcd. Keep holds on to it. Its
// methods are safe for concurrent use.
type Claim struct {
	store *Store
	log   *logrus.Entry

	// listing is the listing Acquire decided on; Watch can start from it
	// instead of listing again.
	listing *Listing

	mu      sync.Mutex
	lease   subnet.Lease     // guarded by mu
	id      clientv3.LeaseID // guarded by mu
	problem error            // guarded by mu; why the claim is not healthy
	expires time.Time        // guarded by mu; per the last grant or keep-alive answer
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

// Acquire leases a subnet for the node in req: the one it already holds
// (same node name, or same public IP on a lease without a node name), else
// its previous subnet if free, else a random free one. Creating the key
// succeeds only if nobody holds it; losing a race to another node means
// trying another subnet. While etcd is unreachable Acquire keeps retrying
// until ctx ends. It fails without retrying only when every subnet is taken.
func (s *Store) Acquire(ctx context.Context, req AcquireRequest) (*Claim, error) {
	if err := req.validate(); err != nil {
		return nil, err
	}
	log := s.log.WithField("node", req.Attrs.Node)
	value, err := json.Marshal(req.Attrs)
	if err != nil {
		return nil, fmt.Errorf("encoding lease value: %w", err)
	}
	var id clientv3.LeaseID
	var claim *Claim
	// Tried keys: a race lost on a key is not retried with the same key
	// even if a stale listing still shows it free.
	lost := map[string]bool{}
	err = s.retryLogged(ctx, "acquiring a subnet", func(ctx context.Context) error {
		for {
			if id == clientv3.NoLease {
				cctx, cancel := s.call(ctx)
				g, err := s.cli.Grant(cctx, int64(s.ttl/time.Second))
				cancel()
				if err != nil {
					return fmt.Errorf("granting an etcd lease: %w", err)
				}
				id = g.ID
			}
			listing, err := s.List(ctx)
			if err != nil {
				return err
			}
			c, err := s.choose(log, req, listing, lost)
			if err != nil {
				return retryStop{err}
			}
			l := c.lease
			key := s.SubnetsPrefix() + l.Key()
			cctx, cancel := s.call(ctx)
			resp, err := s.cli.Txn(cctx).If(c.guard).Then(clientv3.OpPut(key, string(value), clientv3.WithLease(id))).Commit()
			cancel()
			if err != nil {
				return fmt.Errorf("writing lease %s: %w", key, err)
			}
			if !resp.Succeeded {
				lost[l.Key()] = true
				log.WithField("subnet", l.Key()).Info("another node took the subnet first; trying another")
				continue
			}
			if c.previous != clientv3.NoLease && c.previous != id {
				s.revokeIfEmpty(ctx, c.previous)
			}
			l.Attrs = req.Attrs
			claim = &Claim{store: s, log: log, lease: l, id: id, expires: time.Now().Add(s.ttl), listing: listing}
			log.WithFields(logrus.Fields{"subnet": l.Key(), "etcd_lease": fmt.Sprintf("%x", int64(id)), "ttl": s.ttl}).Info("acquired subnet")
			return nil
		}
	})
	if err != nil && id != clientv3.NoLease {
		s.revoke(id)
	}
	return claim, err
}

// candidate is a subnet to claim.
type candidate struct {
	lease subnet.Lease
	// guard is the transaction condition that makes claiming it safe.
	guard clientv3.Cmp
	// previous is the etcd lease the key was attached to when this node
	// takes back its own key; NoLease for a new key.
	previous clientv3.LeaseID
}

// choose picks the subnet to claim.
func (s *Store) choose(log *logrus.Entry, req AcquireRequest, listing *Listing, lost map[string]bool) (candidate, error) {
	cfg := req.Config
	takenV4 := map[netip.Prefix]bool{}
	takenV6 := map[netip.Prefix]bool{}
	for _, e := range listing.Entries {
		v4, v6, err := subnet.ParseKey(e.Key)
		if err != nil {
			continue
		}
		takenV4[v4], takenV6[v6] = true, true
		if e.Err != nil || lost[e.Key] || !isMine(&e.Lease.Attrs, &req.Attrs) {
			continue
		}
		if err := cfg.CheckLease(&e.Lease); err != nil {
			log.WithField("subnet", e.Key).WithError(err).Warn("this node's old lease does not fit the network; leasing a new subnet")
			continue
		}
		key := s.SubnetsPrefix() + e.Key
		return candidate{
			lease:    e.Lease,
			guard:    clientv3.Compare(clientv3.ModRevision(key), "=", e.ModRevision),
			previous: e.EtcdLease,
		}, nil
	}
	for k := range lost {
		v4, v6, _ := subnet.ParseKey(k)
		takenV4[v4], takenV6[v6] = true, true
	}
	notExists := func(l subnet.Lease) clientv3.Cmp {
		return clientv3.Compare(clientv3.CreateRevision(s.SubnetsPrefix()+l.Key()), "=", 0)
	}

	prev := subnet.Lease{Subnet: req.Previous, IPv6Subnet: req.PreviousIPv6}
	prevOK := cfg.IPv4.Enabled() == req.Previous.IsValid() && cfg.IPv6.Enabled() == req.PreviousIPv6.IsValid()
	if prevOK && (!req.Previous.IsValid() || cfg.IPv4.Contains(req.Previous) && !takenV4[req.Previous]) &&
		(!req.PreviousIPv6.IsValid() || cfg.IPv6.Contains(req.PreviousIPv6) && !takenV6[req.PreviousIPv6]) {
		return candidate{lease: prev, guard: notExists(prev)}, nil
	}

	var l subnet.Lease
	s.rndMu.Lock()
	defer s.rndMu.Unlock()
	if cfg.IPv4.Enabled() {
		sn, err := cfg.IPv4.Allocate(takenV4, s.rnd)
		if err != nil {
			return candidate{}, fmt.Errorf("acquiring a subnet: %w", err)
		}
		l.Subnet = sn
	}
	if cfg.IPv6.Enabled() {
		sn, err := cfg.IPv6.Allocate(takenV6, s.rnd)
		if err != nil {
			return candidate{}, fmt.Errorf("acquiring a subnet: %w", err)
		}
		l.IPv6Subnet = sn
	}
	return candidate{lease: l, guard: notExists(l)}, nil
}

// isMine reports whether lease l belongs to the node described by me.
func isMine(l, me *subnet.Attrs) bool {
	if me.Node != "" && l.Node != "" {
		return l.Node == me.Node
	}
	return me.PublicIP.IsValid() && l.PublicIP == me.PublicIP ||
		me.PublicIPv6.IsValid() && l.PublicIPv6 == me.PublicIPv6
}

// revokeIfEmpty revokes an etcd lease that no key is attached to any more,
// so that 'etcdctl lease list' shows no leftovers of earlier runs.
func (s *Store) revokeIfEmpty(ctx context.Context, id clientv3.LeaseID) {
	cctx, cancel := s.call(ctx)
	defer cancel()
	ttl, err := s.cli.TimeToLive(cctx, id, clientv3.WithAttachedKeys())
	if err == nil && ttl.TTL > 0 && len(ttl.Keys) == 0 {
		s.cli.Revoke(cctx, id)
	}
}

func (s *Store) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	s.cli.Revoke(ctx, id)
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
				c.log.WithFields(logrus.Fields{"subnet": c.Lease().Key(), "etcd_lease": fmt.Sprintf("%x", int64(id))}).
					Warn("etcd lease lost (expired while etcd was unreachable?); re-creating the same subnet")
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
	var conflictLogged time.Time
	s.retryLogged(ctx, "re-creating this node's lease", func(ctx context.Context) error {
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
			if time.Since(conflictLogged) > 30*time.Second {
				conflictLogged = time.Now()
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
