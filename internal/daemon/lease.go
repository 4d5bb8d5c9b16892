package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime/debug"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/internal/bgp"
	"github.com/weft-net/weft/internal/mailbox"
	"github.com/weft-net/weft/internal/masq"
	"github.com/weft-net/weft/internal/ratelog"
	"github.com/weft-net/weft/internal/reconcile"
	"github.com/weft-net/weft/internal/retry"
	"github.com/weft-net/weft/subnet"
)

// attrs is the lease value that says what a announces.
func (d *daemon) attrs(a reconcile.Announcement) subnet.Attrs {
	return subnet.Attrs{
		PublicIP: a.PublicIP, PublicIPv6: a.PublicIPv6, BackendType: a.Backend,
		BackendData: a.Published.Data, BackendV6Data: a.Published.V6Data, Node: d.cfg.NodeName,
	}
}

// announce keeps the node's lease and subnet.env saying what the
// reconciler announces, until ctx ends. It publishes new attributes in the
// lease (a backend switch, a new address), retrying while etcd cannot take
// them. Once the peers of the first listing are programmed it installs the
// nftables table, writes subnet.env and reports ready; afterwards it
// rewrites subnet.env whenever its content changes (the pod MTU). From
// ready on, it tells the BGP speaker (bgpNode, nil when BGP is off) what
// this node's subnets and addresses are.
func (d *daemon) announce(ctx context.Context, claim leaseClaim, network *subnet.Config, in <-chan reconcile.Announcement, bgpNode *mailbox.Mailbox[bgp.Node]) error {
	log := d.log.WithField("component", "lease")
	var (
		want     reconcile.Announcement
		written  *subnet.Env // what subnet.env holds, once ready
		told     bgp.Node    // what the BGP speaker was told
		backoff  retry.Backoff
		again    <-chan time.Time
		failures = ratelog.Limiter{Every: 30 * time.Second}
	)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case want = <-in:
		case <-again:
			again = nil
		}
		cur := claim.Lease()
		if attrs := d.attrs(want); !attrs.Equal(&cur.Attrs) {
			if err := claim.Update(ctx, attrs); err != nil {
				if failures.Allow("update", "failed") {
					log.WithError(err).Warn("cannot announce the change in the lease yet; retrying")
				}
				again = time.After(backoff.Next())
			} else {
				backoff.Reset()
			}
		}
		if !want.Ready {
			continue
		}
		env := &subnet.Env{
			Network: network.IPv4.Network, Subnet: subnet.GatewayPrefix(cur.Subnet),
			IPv6Network: network.IPv6.Network, IPv6Subnet: subnet.GatewayPrefix(cur.IPv6Subnet),
			MTU: want.MTU, IPMasq: d.cfg.IPMasq,
		}
		switch {
		case written == nil:
			if err := d.becomeReady(ctx, network, env, claim); err != nil {
				return err
			}
		case *env != *written:
			if err := subnet.WriteEnvFile(d.cfg.SubnetFile, env); err != nil {
				log.WithError(err).Error("rewriting subnet.env")
				again = time.After(backoff.Next())
				continue
			}
			log.WithFields(logrus.Fields{"subnet_file": d.cfg.SubnetFile, "mtu": env.MTU, "was": written.MTU}).Info("rewrote subnet.env")
		}
		written = env
		if bgpNode != nil {
			node := bgp.Node{Subnets: slices.Collect(cur.Subnets), PublicIP: want.PublicIP, PublicIPv6: want.PublicIPv6}
			if !slices.Equal(node.Subnets, told.Subnets) || node.PublicIP != told.PublicIP || node.PublicIPv6 != told.PublicIPv6 {
				told = node
				bgpNode.Send(node)
			}
		}
	}
}

// becomeReady installs the nftables table and writes subnet.env, after
// which the node is ready. If subnet.env cannot be written weftd stops,
// and gives back the lease if it was new: no pod can use it.
func (d *daemon) becomeReady(ctx context.Context, network *subnet.Config, env *subnet.Env, claim leaseClaim) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	var networks []netip.Prefix
	for _, p := range network.Pools() {
		networks = append(networks, p.Network)
	}
	if err := masq.Apply(conn, masq.Rules{Networks: networks, Masquerade: d.cfg.IPMasq}); err != nil {
		return err
	}
	if err := subnet.WriteEnvFile(d.cfg.SubnetFile, env); err != nil {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if aerr := claim.Abandon(actx); aerr != nil {
			d.log.WithError(aerr).Warn("cannot give back the new lease; it expires after --lease-ttl")
		}
		return err
	}
	d.board.set(func(b *board) { b.ready, b.notReady = true, "" })
	// Startup's garbage (the listing, the first sync) is the most weftd
	// ever holds; give it back rather than keep it resident, and from now
	// on collect sooner: steady state allocates little. GOGC, when set,
	// wins (as with Calico's Felix).
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(d.cfg.GCPercent)
	}
	debug.FreeOSMemory()
	if err := notifySystemd("READY=1"); err != nil {
		d.log.WithError(err).Warn("cannot notify systemd")
	}
	d.log.WithFields(logrus.Fields{"subnet": claim.Lease().Key(), "subnet_file": d.cfg.SubnetFile}).Info("ready")
	return nil
}
