package daemon

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/bgp"
	"github.com/weft-net/weft/subnet"
)

// bgpSettings merges the cluster's BGP object (network.BGP) with this
// node's --bgp-* flags. ok is false when neither configures BGP: then the
// speaker does not run.
func (d *daemon) bgpSettings(network *subnet.Config, ext *backend.ExternalInterface) (cfg bgp.Config, opts bgp.Options, ok bool, err error) {
	node := d.cfg.BGP
	cluster := network.BGP
	if cluster == nil && len(node.Peers) == 0 {
		return bgp.Config{}, bgp.Options{}, false, nil
	}
	cluster = d.effectiveBGP(cluster)
	cfg = bgp.Config{
		ASN: cluster.ASN, RouterID: node.RouterID, ListenPort: node.ListenPort,
		GracefulRestart: cluster.GracefulRestartTime, Log: d.log,
	}
	if node.ASN != 0 {
		cfg.ASN = node.ASN
	}
	if !cfg.RouterID.IsValid() {
		cfg.RouterID = ext.PublicIP
	}
	if !cfg.RouterID.Is4() {
		return bgp.Config{}, bgp.Options{}, false, &InvalidError{Err: bgp.ErrNoRouterID}
	}
	return cfg, d.bgpOptions(cluster), true, nil
}

// effectiveBGP is the cluster's BGP object, or on a node that runs BGP
// from its own --bgp-peer-* flags alone, the defaults it runs with: a
// BGP object added later is compared with what the speaker really uses.
func (d *daemon) effectiveBGP(cluster *subnet.BGP) *subnet.BGP {
	if cluster == nil && len(d.cfg.BGP.Peers) > 0 {
		return subnet.DefaultBGP()
	}
	return cluster
}

// bgpOptions are the speaker's settings from the cluster's BGP object (nil:
// none) and this node's flags: the peers of both (a node's own setting for
// an address wins), the node's password on every session.
func (d *daemon) bgpOptions(cluster *subnet.BGP) bgp.Options {
	opts := bgp.Options{PodSubnets: true}
	peers := map[netip.Addr]subnet.BGPPeer{}
	if cluster != nil {
		opts.PodSubnets = cluster.AdvertisePodSubnets
		for _, c := range cluster.Communities {
			opts.Communities = append(opts.Communities, uint32(c))
		}
		for _, p := range cluster.Peers {
			peers[p.Address] = p
		}
	}
	for _, p := range d.cfg.BGP.Peers {
		peers[p.Address] = p
	}
	for _, addr := range slices.SortedFunc(maps.Keys(peers), netip.Addr.Compare) {
		p := peers[addr]
		opts.Peers = append(opts.Peers, bgp.Peer{Address: p.Address, ASN: p.ASN, Port: p.Port, Password: d.cfg.BGP.Password})
	}
	return opts
}

// bgpChange says why a new cluster configuration cannot be applied to the
// running speaker ("" if it can): its ASN or graceful-restart time, or
// turning BGP on or off, need a restart of weftd.
func bgpChange(running bool, cur, next *subnet.BGP) string {
	switch {
	case !running && next != nil && len(next.Peers) > 0:
		return "BGP was configured (BGP.Peers); restart weftd to start its BGP speaker"
	case running && cur != nil && next == nil:
		return "BGP was removed from the configuration; restart weftd to stop its BGP speaker (its routes stay advertised until then)"
	case running && cur != nil && next != nil && cur.ASN != next.ASN:
		return fmt.Sprintf("BGP.ASN changed (%d → %d); restart weftd to apply it", cur.ASN, next.ASN)
	case running && cur != nil && next != nil && cur.GracefulRestartTime != next.GracefulRestartTime:
		return fmt.Sprintf("BGP.GracefulRestartTime changed (%v → %v); restart weftd to apply it", cur.GracefulRestartTime, next.GracefulRestartTime)
	}
	return ""
}
