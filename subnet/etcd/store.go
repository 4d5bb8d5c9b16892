package etcd

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/etcdwatch"
	"github.com/weft-net/weft/internal/ratelog"
	"github.com/weft-net/weft/internal/retry"
	"github.com/weft-net/weft/subnet"
)

// Options configures a Store. Zero fields take the defaults.
type Options struct {
	// Prefix is the key prefix; default DefaultPrefix.
	Prefix string
	// TTL of the etcd lease each subnet key is attached to; default 24h.
	TTL time.Duration
	// Timeout bounds every single etcd call; default 5s.
	Timeout time.Duration
	// Log receives the store's log lines; default the standard logger.
	Log *logrus.Entry
}

// Store reads and writes weft's keys in etcd. It is safe for concurrent use.
type Store struct {
	cli     *clientv3.Client
	prefix  string
	ttl     time.Duration
	timeout time.Duration
	log     *logrus.Entry

	watchRestarts atomic.Uint64 // of the lease watch
	// retries holds back repeated "etcd unreachable" lines.
	retries ratelog.Limiter

	rndMu sync.Mutex
	rnd   *rand.Rand // guarded by rndMu
}

// ErrNoConfig is returned by GetConfig when etcd holds no configuration.
var ErrNoConfig = errors.New("no network configuration in etcd")

// New returns a store using cli. The caller keeps ownership of cli.
func New(cli *clientv3.Client, opts Options) *Store {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.TTL == 0 {
		opts.TTL = 24 * time.Hour
	}
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Log == nil {
		opts.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	return &Store{
		cli:     cli,
		prefix:  strings.TrimSuffix(opts.Prefix, "/"),
		ttl:     opts.TTL,
		timeout: opts.Timeout,
		log:     opts.Log,
		retries: ratelog.Limiter{Every: 5 * time.Second},
		rnd:     rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
}

// ConfigKey is where the network configuration lives.
func (s *Store) ConfigKey() string { return s.prefix + "/config" }

// SubnetsPrefix is the directory of the lease keys, with a trailing slash.
func (s *Store) SubnetsPrefix() string { return s.prefix + "/subnets/" }

// Client returns the store's etcd client, for other stores of the same
// etcd (internal/etcdwatch, service/etcd).
func (s *Store) Client() *clientv3.Client { return s.cli }

// Endpoints returns the etcd endpoints the store talks to, for messages.
func (s *Store) Endpoints() []string { return s.cli.Endpoints() }

// WatchRestarts counts how often a lease watch had to be re-established.
func (s *Store) WatchRestarts() uint64 { return s.watchRestarts.Load() }

func (s *Store) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// GetConfig reads and validates the network configuration. It wraps
// ErrNoConfig when there is none and returns a *subnet.ConfigError when it
// is invalid.
func (s *Store) GetConfig(ctx context.Context) (*subnet.Config, []string, error) {
	cctx, cancel := s.call(ctx)
	defer cancel()
	resp, err := s.cli.Get(cctx, s.ConfigKey())
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s from etcd %v: %w", s.ConfigKey(), s.Endpoints(), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil, fmt.Errorf("%w at %s; write one with 'weftctl config set FILE'", ErrNoConfig, s.ConfigKey())
	}
	return subnet.ParseConfig(resp.Kvs[0].Value)
}

// PutConfig writes cfg's original document to the configuration key.
func (s *Store) PutConfig(ctx context.Context, cfg *subnet.Config) error {
	cctx, cancel := s.call(ctx)
	defer cancel()
	if _, err := s.cli.Put(cctx, s.ConfigKey(), string(cfg.Raw)); err != nil {
		return fmt.Errorf("writing %s to etcd %v: %w", s.ConfigKey(), s.Endpoints(), err)
	}
	return nil
}

// Entry is one key under the subnets directory as read from etcd.
type Entry = etcdwatch.Entry[subnet.Lease]

// Listing is every lease key at one revision.
type Listing = etcdwatch.Listing[subnet.Lease]

// List reads every lease key, in pages at the revision of the first page,
// so that neither etcd nor weft holds a large cluster's whole listing in
// one response.
func (s *Store) List(ctx context.Context) (*Listing, error) {
	return etcdwatch.List(ctx, s.cli, s.SubnetsPrefix(), s.timeout, subnet.ParseLease)
}

// TTL returns how long the etcd lease id has left, or 0 if it has expired.
func (s *Store) TTL(ctx context.Context, id clientv3.LeaseID) (time.Duration, error) {
	if id == clientv3.NoLease {
		return 0, nil
	}
	cctx, cancel := s.call(ctx)
	defer cancel()
	resp, err := s.cli.TimeToLive(cctx, id)
	if err != nil {
		return 0, fmt.Errorf("reading TTL of etcd lease %x: %w", int64(id), err)
	}
	return time.Duration(max(resp.TTL, 0)) * time.Second, nil
}

// retryLogged retries fn while etcd is unreachable, logging the endpoint and
// the error on the first failure and then every few seconds.
func (s *Store) retryLogged(ctx context.Context, what string, fn func(context.Context) error) error {
	return retry.Do(ctx, nil, fn, func(err error, attempt int) {
		var inUse *NameInUseError
		if errors.As(err, &inUse) {
			return // said where it is found, as an error of its own, not of etcd
		}
		if s.retries.Allow(what, "failed") {
			s.log.WithFields(logrus.Fields{"endpoints": s.Endpoints(), "attempt": attempt}).
				WithError(err).Warnf("%s failed; retrying", what)
		}
	})
}
