package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/internal/status"
	"github.com/weft-net/weft/subnet"
)

// configPollInterval is how often --net-config-path is read for changes. A
// ConfigMap update swaps a symlink; reading the path follows it.
const configPollInterval = 2 * time.Second

// watchConfig sends every valid new configuration to out until ctx ends:
// from --net-config-path by polling the file, else from <prefix>/config by
// an etcd watch. An invalid document is logged, reported in the status and
// not sent.
func (d *daemon) watchConfig(ctx context.Context, out chan<- *subnet.Config) error {
	log := d.log.WithField("component", "config")
	last := d.netCfg.Raw
	consider := func(data []byte) {
		if bytes.Equal(data, last) {
			return
		}
		last = bytes.Clone(data)
		cfg, warnings, err := subnet.ParseConfig(data)
		if err != nil {
			log.WithError(err).Error("new network configuration is invalid; keeping the current one")
			d.rejectConfig(fmt.Sprintf("new configuration is invalid: %v", err))
			return
		}
		for _, w := range warnings {
			log.Warn(w)
		}
		select {
		case out <- cfg:
		case <-ctx.Done():
		}
	}
	if d.cfg.NetConfigPath == "" {
		docs := make(chan []byte)
		go func() {
			for data := range docs {
				consider(data)
			}
		}()
		err := d.store.WatchConfig(ctx, docs)
		close(docs)
		return err
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

func (d *daemon) rejectConfig(why string) {
	d.metrics.configRejected.Inc()
	d.state.update(func(s *status.Status) { s.ConfigIssue = why })
}

// applyConfig applies a new configuration. A backend change is applied
// live: the new backend is set up, the lease announces it, and the old one
// keeps serving peers still on it (see backendSet). A change of the
// networks cannot be applied to a running node and is refused.
func (d *daemon) applyConfig(ctx context.Context, cfg *subnet.Config) {
	log := d.log.WithField("component", "config")
	cur := d.netCfg
	if cfg.IPv4 != cur.IPv4 || cfg.IPv6 != cur.IPv6 {
		why := fmt.Sprintf("the pod networks changed (%s → %s); this cannot be applied to running nodes: keeping %s until weftd restarts",
			describePools(cur), describePools(cfg), describePools(cur))
		log.Error(why)
		d.rejectConfig(why)
		return
	}
	d.state.update(func(s *status.Status) { s.ConfigIssue = "" })
	if cfg.Backend == cur.Backend {
		d.netCfg = cfg
		return
	}
	old := cur.Backend.Type
	d.backends.env.Network = cfg
	primary, err := d.backends.setPrimary(ctx, cfg.Backend)
	if err != nil {
		why := fmt.Sprintf("cannot switch to backend %s: %v; staying on %s", cfg.Backend.Type, err, old)
		log.Error(why)
		d.backends.env.Network = cur
		d.rejectConfig(why)
		return
	}
	d.netCfg = cfg
	attrs := d.claim.Lease().Attrs
	attrs.BackendType = primary.Type()
	attrs.BackendData, attrs.BackendV6Data = primary.published.Data, primary.published.V6Data
	d.pending = &attrs
	d.publish(ctx)
	if err := d.writeSubnetEnv(); err != nil {
		log.WithError(err).Error("rewriting subnet.env after the switch")
	}
	d.metrics.setBackend(primary.Type())
	d.state.update(func(s *status.Status) { s.Backend, s.MTU = primary.Type(), primary.MTU() })
	log.WithFields(logrus.Fields{"from": old, "to": cfg.Backend.Type}).
		Info("switched backend; peers still announcing the old one are served by it until they switch")
}

// publish writes pending lease attributes to etcd; if etcd cannot take
// them now, the sync loop calls it again.
func (d *daemon) publish(ctx context.Context) {
	if err := d.claim.Update(ctx, *d.pending); err != nil {
		d.log.WithError(err).Warn("cannot announce the new backend in the lease yet; retrying")
		return
	}
	d.pending = nil
}

func describePools(c *subnet.Config) string {
	var s string
	for _, p := range c.Pools() {
		if s != "" {
			s += " and "
		}
		s += fmt.Sprintf("%s/%d subnets", p.Network, p.SubnetLen)
	}
	return s
}
