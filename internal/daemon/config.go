// Package daemon is weftd: it leases this node's subnet, programs the
// kernel through a backend so every peer's pods are reachable, and keeps
// both in step with etcd until told to stop.
package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcd"
)

// Config is weftd's configuration, from its flags.
type Config struct {
	Etcd     etcd.ClientConfig
	Prefix   string
	LeaseTTL time.Duration

	Ifaces        []string
	IfaceRegex    []string
	IfaceCanReach netip.Addr
	PublicIP      netip.Addr
	PublicIPv6    netip.Addr

	// NetConfigPath, when set, is read instead of <prefix>/config.
	NetConfigPath string
	SubnetFile    string
	IPMasq        bool
	// HealthzAddr serves /healthz, /readyz, /metrics and /status; empty
	// disables it.
	HealthzAddr string
	// MetricsAddr serves /metrics, /healthz and /readyz (not /status) for
	// a cluster's Prometheus and the kubelet's probes; empty disables.
	MetricsAddr string
	NodeName    string
	// ResyncInterval is how often the kernel is compared with the leases
	// even without events (drift repair).
	ResyncInterval time.Duration
	// GCPercent is the Go collector's target (GOGC) once weftd is ready:
	// startup, a burst of work, runs with Go's default.
	GCPercent int
	// BGP is this node's own BGP settings; with the cluster's (the BGP
	// object of net-conf.json) they say whether and how the node peers.
	BGP NodeBGP
	// Kube, when Enabled, takes the leases from the Kubernetes API
	// instead of etcd (--kube-subnet-mgr).
	Kube Kube

	Log *logrus.Logger
}

// Kube is what --kube-* say.
type Kube struct {
	Enabled bool
	// Kubeconfig is a kubeconfig file (--kubeconfig-file); empty: the
	// service account of the pod weftd runs in.
	Kubeconfig string
	// APIURL overrides the API server's address (--kube-api-url).
	APIURL string
	// AnnotationPrefix names the Node annotations (--kube-annotation-prefix).
	AnnotationPrefix string
}

// NodeBGP is what --bgp-* say: the peers of this node (its top-of-rack
// routers) besides the cluster's, and how it speaks to all of them.
type NodeBGP struct {
	Peers []subnet.BGPPeer
	// Password is the TCP MD5 password of every session of this node;
	// never logged or reported.
	Password string
	// ASN overrides the cluster's AS number for this node (0: the
	// cluster's).
	ASN uint32
	// RouterID is the BGP router ID (default: the node's IPv4 address).
	RouterID netip.Addr
	// ListenPort is where routers may connect (0: nowhere, dial out only).
	ListenPort int
}

// InvalidError is a configuration or flag value weftd cannot run with
// (exit status 2).
type InvalidError struct{ Err error }

func (e *InvalidError) Error() string { return e.Err.Error() }
func (e *InvalidError) Unwrap() error { return e.Err }

func invalid(format string, args ...any) error {
	return &InvalidError{Err: fmt.Errorf(format, args...)}
}

// Validate checks what can be checked without the network. Its errors are
// *InvalidError and name the flag and the value.
func (c *Config) Validate() error {
	if c.Kube.Enabled && c.NetConfigPath == "" {
		return invalid("--kube-subnet-mgr reads net-conf.json from a file: give --net-config-path (the mounted ConfigMap, e.g. /etc/kube-flannel/net-conf.json)")
	}
	if c.Kube.Enabled && !regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`).MatchString(c.Kube.AnnotationPrefix) {
		return invalid("--kube-annotation-prefix %q is not a DNS subdomain such as flannel.alpha.coreos.com", c.Kube.AnnotationPrefix)
	}
	if !c.Kube.Enabled && len(c.Etcd.Endpoints) == 0 && c.NetConfigPath == "" {
		return invalid("--etcd-endpoints is empty; give at least one etcd URL")
	}
	for _, ep := range c.Etcd.Endpoints {
		if !regexp.MustCompile(`^(https?|unix|unixs)://`).MatchString(ep) {
			return invalid("--etcd-endpoints %q is not a URL; use http://host:port or https://host:port", ep)
		}
	}
	if (c.Etcd.CertFile == "") != (c.Etcd.KeyFile == "") {
		return invalid("--etcd-certfile and --etcd-keyfile go together; give both or neither")
	}
	if c.Prefix == "" || c.Prefix[0] != '/' {
		return invalid("--etcd-prefix %q must start with /", c.Prefix)
	}
	if c.LeaseTTL < 5*time.Second {
		return invalid("--lease-ttl %v is too short; use at least 5s", c.LeaseTTL)
	}
	for _, expr := range c.IfaceRegex {
		if _, err := regexp.Compile(expr); err != nil {
			return invalid("--iface-regex %q is not a regular expression: %v", expr, err)
		}
	}
	if c.PublicIP.IsValid() && !c.PublicIP.Is4() {
		return invalid("--public-ip %s is not an IPv4 address; use --public-ipv6 for IPv6", c.PublicIP)
	}
	if c.PublicIPv6.IsValid() && !c.PublicIPv6.Is6() {
		return invalid("--public-ipv6 %s is not an IPv6 address", c.PublicIPv6)
	}
	if c.SubnetFile == "" {
		return invalid("--subnet-file is empty")
	}
	if c.NodeName == "" {
		return invalid("--node-name is empty and the host name is unknown")
	}
	if c.ResyncInterval <= 0 {
		return invalid("--resync-interval %v must be positive", c.ResyncInterval)
	}
	if c.GCPercent < 10 || c.GCPercent > 1000 {
		return invalid("--gc-percent %d must be from 10 to 1000", c.GCPercent)
	}
	if c.BGP.RouterID.IsValid() && !c.BGP.RouterID.Is4() {
		return invalid("--bgp-router-id %s is not an IPv4 address; a BGP router ID is written as one, even on IPv6-only nodes", c.BGP.RouterID)
	}
	if c.BGP.ListenPort < 0 || c.BGP.ListenPort > 65535 {
		return invalid("--bgp-listen-port %d is out of range; use 1 to 65535, or 0 to only dial out", c.BGP.ListenPort)
	}
	if c.Log == nil {
		return errors.New("daemon: no logger")
	}
	return nil
}

// infrastructure returns the etcd endpoints given as addresses (not
// names), which no peer's lease may ask to be reached at.
func (c *Config) infrastructure() map[netip.Addr]string {
	infra := map[netip.Addr]string{}
	if c.Kube.Enabled {
		return infra
	}
	for _, ep := range c.Etcd.Endpoints {
		u, err := url.Parse(ep)
		if err != nil {
			continue
		}
		if a, err := netip.ParseAddr(u.Hostname()); err == nil {
			infra[a.Unmap()] = "etcd's (--etcd-endpoints)"
		}
	}
	return infra
}
