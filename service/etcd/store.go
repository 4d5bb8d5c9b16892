// Package etcd is weft's service store in etcd: each definition is one
// JSON document at <prefix>/services/<namespace>/<name>; each virtual IP and
// node port a service holds is reserved by a key of its own,
// <prefix>/service-ips/<ip> and <prefix>/node-ports/<protocol>/<port>, whose
// value names the service, so that two services can never get the same
// one, however many weftctl run at once.
package etcd

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/etcdwatch"
	"github.com/weft-net/weft/service"
	"github.com/weft-net/weft/subnet"
)

// Store reads and writes service definitions. It is safe for concurrent
// use.
type Store struct {
	cli     *clientv3.Client
	prefix  string
	timeout time.Duration
	log     *logrus.Entry

	restarts atomic.Uint64

	mu  sync.Mutex
	rnd *rand.Rand // guarded by mu
}

// New returns a store of the services under prefix (the network's etcd
// prefix, e.g. /weft/network). The caller keeps ownership of cli.
func New(cli *clientv3.Client, prefix string, log *logrus.Entry) *Store {
	if log == nil {
		log = logrus.NewEntry(logrus.StandardLogger())
	}
	return &Store{
		cli: cli, prefix: strings.TrimSuffix(prefix, "/"), timeout: 5 * time.Second, log: log,
		rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
}

// ServicesPrefix is the directory of the definitions, with a trailing
// slash.
func (s *Store) ServicesPrefix() string { return s.prefix + "/services/" }

func (s *Store) key(namespace, name string) string {
	return s.ServicesPrefix() + namespace + "/" + name
}

func (s *Store) vipKey(ip netip.Addr) string { return s.prefix + "/service-ips/" + ip.String() }

func (s *Store) nodePortKey(p service.Port) string {
	return s.prefix + "/node-ports/" + strings.ToLower(string(p.Protocol)) + "/" + strconv.Itoa(int(p.NodePort))
}

func (s *Store) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// ErrNotFound is returned for a service that does not exist.
var ErrNotFound = errors.New("no such service")

// ErrExists is returned when creating a service that exists.
var ErrExists = errors.New("exists")

// Get reads one service and the revision it was last written at.
func (s *Store) Get(ctx context.Context, namespace, name string) (*service.Service, int64, error) {
	cctx, cancel := s.call(ctx)
	defer cancel()
	resp, err := s.cli.Get(cctx, s.key(namespace, name))
	if err != nil {
		return nil, 0, fmt.Errorf("reading service %s/%s from etcd %v: %w", namespace, name, s.cli.Endpoints(), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("%w %s/%s", ErrNotFound, namespace, name)
	}
	svc, err := service.Parse(namespace+"/"+name, resp.Kvs[0].Value)
	return svc, resp.Kvs[0].ModRevision, err
}

// List reads every service.
func (s *Store) List(ctx context.Context) (*etcdwatch.Listing[*service.Service], error) {
	return etcdwatch.List(ctx, s.cli, s.ServicesPrefix(), s.timeout, service.Parse)
}

// reservations are the keys a service holds.
func (s *Store) reservations(svc *service.Service) []string {
	var keys []string
	for _, v := range svc.VIPs {
		keys = append(keys, s.vipKey(v))
	}
	for _, p := range svc.Ports {
		if p.NodePort != 0 {
			keys = append(keys, s.nodePortKey(p))
		}
	}
	return keys
}

// ConflictError is a service that claims a VIP or node port another
// service holds.
type ConflictError struct {
	Service string
	Field   string // "vips[0]", "ports[1].nodePort"
	What    string // "100.64.0.10", "30080/TCP"
	Other   string // the service that holds it
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("service %s: %s %s is already used by %s", e.Service, e.Field, e.What, e.Other)
}

// Put writes svc, creating it (create) or replacing the service of that
// name, which must still be as it was at revision rev (0: anything). It
// first allocates a VIP from the service network of each family in
// allocate that svc has none of. The VIPs and node ports svc holds are
// reserved in the same transaction; those it no longer holds are released.
// svc must be valid for cfg. It returns the service as written.
func (s *Store) Put(ctx context.Context, svc *service.Service, cfg *subnet.Config, create bool, rev int64, allocate ...bool) (*service.Service, error) {
	key := s.key(svc.Namespace, svc.Name)
	for attempt := 0; attempt < 10; attempt++ {
		cur := svc
		if len(allocate) > 0 {
			var err error
			if cur, err = s.allocate(ctx, svc, cfg, allocate); err != nil {
				return nil, err
			}
		}
		if err := cur.Validate(cfg); err != nil {
			return nil, err
		}
		var old *service.Service
		if !create {
			var oldRev int64
			var err error
			old, oldRev, err = s.Get(ctx, svc.Namespace, svc.Name)
			if err != nil && (!errors.Is(err, ErrNotFound) || rev != 0) {
				return nil, err
			}
			if rev != 0 && oldRev != rev {
				return nil, fmt.Errorf("service %s changed meanwhile (revision %d, not %d); try again", svc.Key(), oldRev, rev)
			}
			rev = oldRev
		}
		held := map[string]bool{}
		if old != nil {
			for _, k := range s.reservations(old) {
				held[k] = true
			}
		}
		value := svc.Key()
		var conds []clientv3.Cmp
		var ops []clientv3.Op
		if create || rev == 0 {
			conds = append(conds, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
		} else {
			conds = append(conds, clientv3.Compare(clientv3.ModRevision(key), "=", rev))
		}
		wanted := map[string]bool{}
		for _, k := range s.reservations(cur) {
			wanted[k] = true
			if held[k] {
				conds = append(conds, clientv3.Compare(clientv3.Value(k), "=", value))
				continue
			}
			conds = append(conds, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
			ops = append(ops, clientv3.OpPut(k, value))
		}
		for k := range held {
			if !wanted[k] {
				ops = append(ops, clientv3.OpDelete(k))
			}
		}
		ops = append(ops, clientv3.OpPut(key, string(cur.Marshal())))
		cctx, cancel := s.call(ctx)
		resp, err := s.cli.Txn(cctx).If(conds...).Then(ops...).Commit()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("writing service %s to etcd %v: %w", svc.Key(), s.cli.Endpoints(), err)
		}
		if resp.Succeeded {
			return cur, nil
		}
		if create {
			if _, _, err := s.Get(ctx, svc.Namespace, svc.Name); err == nil {
				return nil, fmt.Errorf("service %s %w; change it with 'weftctl service add --replace' or remove it first", svc.Key(), ErrExists)
			}
		}
		// What was asked for (not what was allocated) held by another
		// service is final.
		if err := s.conflict(ctx, svc); err != nil {
			return nil, err
		}
		// The service changed, or an allocation lost a race: again.
	}
	return nil, fmt.Errorf("writing service %s: too many concurrent changes; try again", svc.Key())
}

// conflict finds a reservation of svc that another service holds.
func (s *Store) conflict(ctx context.Context, svc *service.Service) error {
	check := func(field, what, key string) error {
		cctx, cancel := s.call(ctx)
		defer cancel()
		resp, err := s.cli.Get(cctx, key)
		if err != nil {
			return err
		}
		if len(resp.Kvs) > 0 && string(resp.Kvs[0].Value) != svc.Key() {
			return &ConflictError{Service: svc.Key(), Field: field, What: what, Other: string(resp.Kvs[0].Value)}
		}
		return nil
	}
	for i, v := range svc.VIPs {
		if err := check(fmt.Sprintf("vips[%d]", i), v.String(), s.vipKey(v)); err != nil {
			return err
		}
	}
	for i, p := range svc.Ports {
		if p.NodePort == 0 {
			continue
		}
		if err := check(fmt.Sprintf("ports[%d].nodePort", i), fmt.Sprintf("%d/%s", p.NodePort, p.Protocol), s.nodePortKey(p)); err != nil {
			return err
		}
	}
	return nil
}

// allocate returns svc with a free VIP of each family in families
// (IPv4, IPv6 by index) that it has none of. The choice is random among
// the free addresses, so that concurrent allocations rarely collide; the
// reservation in Put settles a collision.
func (s *Store) allocate(ctx context.Context, svc *service.Service, cfg *subnet.Config, families []bool) (*service.Service, error) {
	out := *svc
	out.VIPs = append([]netip.Addr(nil), svc.VIPs...)
	for i, want := range families {
		ipv6 := i == 1
		if !want {
			continue
		}
		if _, has := out.VIP(ipv6); has {
			continue
		}
		network := cfg.Services.IPv4
		if ipv6 {
			network = cfg.Services.IPv6
		}
		if !network.IsValid() {
			return nil, fmt.Errorf("cannot allocate an %s VIP: the network configuration has no %s", map[bool]string{false: "IPv4", true: "IPv6"}[ipv6], map[bool]string{false: "ServiceNetwork", true: "ServiceIPv6Network"}[ipv6])
		}
		taken, err := s.takenVIPs(ctx)
		if err != nil {
			return nil, err
		}
		ip, err := s.pick(network, taken)
		if err != nil {
			return nil, err
		}
		out.VIPs = append(out.VIPs, ip)
	}
	return &out, nil
}

// takenVIPs lists the reserved VIPs.
func (s *Store) takenVIPs(ctx context.Context) (map[netip.Addr]bool, error) {
	cctx, cancel := s.call(ctx)
	defer cancel()
	prefix := s.prefix + "/service-ips/"
	resp, err := s.cli.Get(cctx, prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("listing the reserved VIPs in etcd %v: %w", s.cli.Endpoints(), err)
	}
	taken := map[netip.Addr]bool{}
	for _, kv := range resp.Kvs {
		if ip, err := netip.ParseAddr(strings.TrimPrefix(string(kv.Key), prefix)); err == nil {
			taken[ip] = true
		}
	}
	return taken, nil
}

// pick chooses a free address of network at random: the network address
// and, for IPv4, the last one are never handed out.
func (s *Store) pick(network netip.Prefix, taken map[netip.Addr]bool) (netip.Addr, error) {
	hostBits := network.Addr().BitLen() - network.Bits()
	size := uint64(1) << min(hostBits, 62)
	s.mu.Lock()
	defer s.mu.Unlock()
	start := s.rnd.Uint64N(size)
	limit := min(size, 1<<20) // a full scan of a huge IPv6 network would never end
	for i := range limit {
		off := (start + i) % size
		ip := addOffset(network.Addr(), off)
		if off == 0 || network.Addr().Is4() && off == size-1 || taken[ip] {
			continue
		}
		return ip, nil
	}
	return netip.Addr{}, fmt.Errorf("every VIP of the service network %s is taken", network)
}

// addOffset adds off to the low bits of a.
func addOffset(a netip.Addr, off uint64) netip.Addr {
	b := a.As16()
	for i := 15; i >= 0 && off > 0; i-- {
		sum := uint64(b[i]) + off&0xff
		b[i] = byte(sum)
		off = off>>8 + sum>>8
	}
	out := netip.AddrFrom16(b)
	if a.Is4() {
		out = out.Unmap()
	}
	return out
}

// Delete removes a service and releases its VIPs and node ports. A
// definition that does not parse is deleted all the same.
func (s *Store) Delete(ctx context.Context, namespace, name string) error {
	key := s.key(namespace, name)
	for attempt := 0; attempt < 10; attempt++ {
		cctx, cancel := s.call(ctx)
		resp, err := s.cli.Get(cctx, key)
		cancel()
		if err != nil {
			return fmt.Errorf("reading service %s/%s from etcd %v: %w", namespace, name, s.cli.Endpoints(), err)
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("%w %s/%s", ErrNotFound, namespace, name)
		}
		ops := []clientv3.Op{clientv3.OpDelete(key)}
		if svc, err := service.Parse(namespace+"/"+name, resp.Kvs[0].Value); err == nil {
			for _, k := range s.reservations(svc) {
				ops = append(ops, clientv3.OpTxn(
					[]clientv3.Cmp{clientv3.Compare(clientv3.Value(k), "=", svc.Key())},
					[]clientv3.Op{clientv3.OpDelete(k)}, nil))
			}
		}
		cctx, cancel = s.call(ctx)
		tresp, err := s.cli.Txn(cctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", resp.Kvs[0].ModRevision)).Then(ops...).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("deleting service %s/%s in etcd %v: %w", namespace, name, s.cli.Endpoints(), err)
		}
		if tresp.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("deleting service %s/%s: too many concurrent changes; try again", namespace, name)
}

// SetEndpoints replaces the endpoints of a service.
func (s *Store) SetEndpoints(ctx context.Context, cfg *subnet.Config, namespace, name string, eps []service.Endpoint) (*service.Service, error) {
	for attempt := 0; attempt < 10; attempt++ {
		svc, rev, err := s.Get(ctx, namespace, name)
		if err != nil {
			return nil, err
		}
		svc.Endpoints = eps
		if err := svc.Validate(cfg); err != nil {
			return nil, err
		}
		cctx, cancel := s.call(ctx)
		resp, err := s.cli.Txn(cctx).If(clientv3.Compare(clientv3.ModRevision(s.key(namespace, name)), "=", rev)).
			Then(clientv3.OpPut(s.key(namespace, name), string(svc.Marshal()))).Commit()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("writing service %s in etcd %v: %w", svc.Key(), s.cli.Endpoints(), err)
		}
		if resp.Succeeded {
			return svc, nil
		}
	}
	return nil, fmt.Errorf("setting the endpoints of %s/%s: too many concurrent changes; try again", namespace, name)
}

// Watch emits every definition, then each change, until ctx ends
// (internal/etcdwatch). A definition that does not parse is emitted with
// its error, so that the receiver (internal/proxy) can log and report it
// with the ones that are not valid for the network.
func (s *Store) Watch(ctx context.Context, emit func(ctx context.Context, batch []etcdwatch.Event[service.Definition]) error) error {
	w := &etcdwatch.Watcher[service.Definition]{
		Client: s.cli, Prefix: s.ServicesPrefix(), What: "service", Timeout: s.timeout, Log: s.log,
		Decode: func(key string, value []byte) (service.Definition, error) {
			svc, err := service.Parse(key, value)
			return service.Definition{Service: svc, Err: err}, nil
		},
		Emit: emit, Restarts: &s.restarts,
	}
	return w.Run(ctx, nil)
}

// WatchRestarts counts how often the service watch was established again.
func (s *Store) WatchRestarts() uint64 { return s.restarts.Load() }
