package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/retry"
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
	// Waiting, if set, hears why acquiring cannot go on yet (another node
	// holds a live lease under this node's name), for the node's status.
	Waiting func(err error)
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
			var inUse *NameInUseError
			if errors.As(err, &inUse) {
				// Not final: the other node may go away (or be renamed).
				if s.retries.Allow("name in use", err.Error()) {
					log.WithError(err).Error("not taking another node's lease")
				}
				if req.Waiting != nil {
					req.Waiting(err)
				}
				return err
			}
			if err != nil {
				return retry.Stop(err)
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
			claim = &Claim{store: s, log: log, lease: l, id: id, expires: time.Now().Add(s.ttl), listing: listing,
				fresh: c.previous == clientv3.NoLease && !(l.Subnet.IsValid() && l.Subnet == req.Previous) &&
					!(l.IPv6Subnet.IsValid() && l.IPv6Subnet == req.PreviousIPv6)}
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
		if e.Err != nil || lost[e.Key] || !isMine(&e.Item.Attrs, &req.Attrs) {
			continue
		}
		// Our name, but another address and an etcd lease that is alive
		// (an expired one takes its key with it): another node runs under
		// this name. Taking its lease would give two nodes one subnet.
		if other := otherAddress(&e.Item.Attrs, &req.Attrs); other.IsValid() && e.Lease != clientv3.NoLease {
			return candidate{}, &NameInUseError{Node: req.Attrs.Node, Other: other, Subnet: e.Key, Key: s.SubnetsPrefix() + e.Key}
		}
		if err := cfg.CheckLease(&e.Item); err != nil {
			log.WithField("subnet", e.Key).WithError(err).Warn("this node's old lease does not fit the network; leasing a new subnet")
			continue
		}
		key := s.SubnetsPrefix() + e.Key
		return candidate{
			lease:    e.Item,
			guard:    clientv3.Compare(clientv3.ModRevision(key), "=", e.ModRevision),
			previous: e.Lease,
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
	// The subnet subnet.env names is the one this node's pods use: keep it
	// if it is free and in the network, even outside SubnetMin and
	// SubnetMax (those bound where new subnets are leased).
	keeps := func(p subnet.Pool, sn netip.Prefix) bool { return p.InNetwork(sn) && sn.Bits() == p.SubnetLen }
	prevOK := cfg.IPv4.Enabled() == req.Previous.IsValid() && cfg.IPv6.Enabled() == req.PreviousIPv6.IsValid()
	if prevOK && (!req.Previous.IsValid() || keeps(cfg.IPv4, req.Previous) && !takenV4[req.Previous]) &&
		(!req.PreviousIPv6.IsValid() || keeps(cfg.IPv6, req.PreviousIPv6) && !takenV6[req.PreviousIPv6]) {
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

// NameInUseError is a live lease of another node under this node's name.
type NameInUseError struct {
	Node   string
	Other  netip.Addr // the other node's public address
	Subnet string     // its lease's key
	Key    string     // the key in etcd
}

func (e *NameInUseError) Error() string {
	return fmt.Sprintf("another node, at %s, holds a live lease (%s) under this node's name %q: two nodes have the same --node-name; "+
		"give this one its own (if this node's address changed instead, remove the old lease: weftctl leases, then etcdctl del %s)",
		e.Other, e.Subnet, e.Node, e.Key)
}

// otherAddress returns the public address of l if it differs from me's
// (of a family both have), else the zero address.
func otherAddress(l, me *subnet.Attrs) netip.Addr {
	switch {
	case l.PublicIP.IsValid() && me.PublicIP.IsValid() && l.PublicIP != me.PublicIP:
		return l.PublicIP
	case l.PublicIPv6.IsValid() && me.PublicIPv6.IsValid() && l.PublicIPv6 != me.PublicIPv6:
		return l.PublicIPv6
	}
	return netip.Addr{}
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
// so that 'etcdctl lease list' shows no leftovers of earlier runs. It is
// best effort: an etcd lease nobody keeps alive expires by itself.
func (s *Store) revokeIfEmpty(ctx context.Context, id clientv3.LeaseID) {
	cctx, cancel := s.call(ctx)
	defer cancel()
	ttl, err := s.cli.TimeToLive(cctx, id, clientv3.WithAttachedKeys())
	if err == nil && ttl.TTL > 0 && len(ttl.Keys) == 0 {
		_, err = s.cli.Revoke(cctx, id)
	}
	if err != nil {
		s.log.WithError(err).WithField("etcd_lease", fmt.Sprintf("%x", int64(id))).Debug("cannot revoke an unused etcd lease; it expires by itself")
	}
}

// revoke revokes an etcd lease this node granted and does not use, best
// effort (it expires by itself).
func (s *Store) revoke(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if _, err := s.cli.Revoke(ctx, id); err != nil {
		s.log.WithError(err).WithField("etcd_lease", fmt.Sprintf("%x", int64(id))).Debug("cannot revoke an unused etcd lease; it expires by itself")
	}
}
