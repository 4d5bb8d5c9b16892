package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/ratelog"
	"github.com/weft-net/weft/internal/retry"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcd"
)

// connect creates the etcd client, retrying while etcd is unreachable (a
// client with credentials authenticates when it is created) and saying so
// every few seconds with the cause.
func connect(ctx context.Context, cfg etcd.ClientConfig, log *logrus.Entry) (*clientv3.Client, error) {
	var cli *clientv3.Client
	say := etcdWaiter(ctx, cfg, log, "cannot connect to etcd; retrying")
	err := retry.Do(ctx, nil, func(context.Context) error {
		var err error
		cli, err = etcd.NewClient(cfg)
		if errors.Is(err, etcd.ErrClientConfig) {
			return retry.Stop(&InvalidError{Err: err})
		}
		return err
	}, say)
	return cli, err
}

// etcdWaiter returns a retry report that says, at most every few seconds,
// that weftd is waiting for etcd: the endpoints, the error, and the cause
// etcd.Probe finds (the etcd client itself often only reports a deadline).
func etcdWaiter(ctx context.Context, cfg etcd.ClientConfig, log *logrus.Entry, msg string) func(error, int) {
	limit := &ratelog.Limiter{Every: 5 * time.Second}
	return func(err error, _ int) {
		if !limit.Allow("etcd", msg) {
			return
		}
		entry := log.WithField("endpoints", cfg.Endpoints).WithError(err)
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if why := etcd.Probe(pctx, cfg); why != nil {
			entry = entry.WithField("cause", why.Error())
		}
		entry.Warn(msg)
	}
}

// readNetConfig reads net-conf.json from --net-config-path or etcd. While
// etcd is unreachable or holds no configuration it waits, saying so every
// few seconds.
func (d *daemon) readNetConfig(ctx context.Context, store *etcd.Store) (*subnet.Config, error) {
	log := d.log.WithField("component", "config")
	var cfg *subnet.Config
	var warnings []string
	if path := d.cfg.NetConfigPath; path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, invalid("--net-config-path: %v", err)
		}
		if cfg, warnings, err = subnet.ParseConfig(data); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	} else {
		say := etcdWaiter(ctx, d.cfg.Etcd, log, "waiting for the network configuration in etcd")
		err := retry.Do(ctx, nil, func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second) // say soon that etcd is away
			defer cancel()
			var err error
			cfg, warnings, err = store.GetConfig(ctx)
			if bad := (*subnet.ConfigError)(nil); errors.As(err, &bad) {
				return retry.Stop(fmt.Errorf("%s in etcd: %w", store.ConfigKey(), err))
			}
			return err
		}, say)
		if err != nil {
			return nil, err
		}
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	fields := logrus.Fields{"backend": cfg.Backend.Type}
	for _, p := range cfg.Pools() {
		fields["network_"+map[bool]string{false: "ipv4", true: "ipv6"}[p.IPv6()]] = p.Network.String()
	}
	log.WithFields(fields).Info("network configuration")
	return cfg, nil
}

// configPollInterval is how often --net-config-path is read for changes. A
// ConfigMap update swaps a symlink; reading the path follows it.
const configPollInterval = 2 * time.Second

// watchConfig sends every valid new configuration to the reconciler and
// the service proxy, and its BGP settings to the speaker, until ctx ends: from --net-config-path
// by polling the file, else from <prefix>/config by an etcd watch. An
// invalid document is logged, reported in the status and not sent; whether
// a valid one can be applied is the reconciler's call (and, for changes of
// BGP that need a restart, this function's).
func (d *daemon) watchConfig(ctx context.Context, store *etcd.Store, cur *subnet.Config, out outputs) error {
	log := d.log.WithField("component", "config")
	last := cur.Raw
	bgpNow := d.effectiveBGP(cur.BGP)
	consider := func(data []byte) {
		if bytes.Equal(data, last) {
			return
		}
		last = bytes.Clone(data)
		cfg, warnings, err := subnet.ParseConfig(data)
		if err != nil {
			log.WithError(err).Error("new network configuration is invalid; keeping the current one")
			d.metrics.ConfigRejected()
			d.board.set(func(b *board) { b.configIssue = fmt.Sprintf("new configuration is invalid: %v", err) })
			return
		}
		for _, w := range warnings {
			log.Warn(w)
		}
		next := d.effectiveBGP(cfg.BGP)
		issue := bgpChange(out.bgpOptions != nil, bgpNow, next)
		if issue != "" {
			log.Error(issue)
			d.metrics.ConfigRejected()
		} else if out.bgpOptions != nil && !bgpNow.Equal(next) {
			bgpNow = next
			out.bgpOptions.Send(d.bgpOptions(cfg.BGP))
		}
		d.board.set(func(b *board) { b.configIssue = issue })
		if out.proxyConfigs != nil {
			out.proxyConfigs.Send(cfg)
		}
		select {
		case out.configs <- cfg:
		case <-ctx.Done():
		}
	}
	if d.cfg.NetConfigPath == "" {
		return store.WatchConfig(ctx, consider)
	}
	t := time.NewTicker(configPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		data, err := os.ReadFile(d.cfg.NetConfigPath)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				log.WithError(err).Warn("reading the network configuration")
			}
			continue
		}
		consider(data)
	}
}
