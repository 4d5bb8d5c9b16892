// Package ipip is weft's IP-in-IP backend: one device weft.ipip (never
// tunl0, which other software owns) and per peer a route
// <peer subnet> via <peer PublicIP> dev weft.ipip onlink.
package ipip

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

// DeviceName is the tunnel device weft owns.
const DeviceName = "weft.ipip"

// Overhead is what IP-in-IP adds to a packet.
const Overhead = 20

// ErrNoKernelSupport is wrapped by Setup when the kernel has no IPIP.
var ErrNoKernelSupport = errors.New("this kernel has no IP-in-IP support (kernel module ipip); load it with: modprobe ipip")

// IPIP is the ipip backend.
type IPIP struct {
	env   backend.Env
	cfg   subnet.Backend
	log   *logrus.Entry
	index int // weft.ipip's index as the last Sync read it; 0: not read
	// direct is the underlay's routing table as the last Sync read it.
	direct *backend.DirectRouter
}

var _ backend.Backend = (*IPIP)(nil)

// New returns the backend; it touches nothing until Setup.
func New(env backend.Env) (*IPIP, error) {
	if env.Network.IPv6.Enabled() {
		return nil, errors.New("ipip carries IPv4 only; for an IPv6 pod network use vxlan or host-gw")
	}
	if !env.Ext.LocalIP.Is4() {
		return nil, errors.New("ipip: the external interface has no IPv4 address to send from")
	}
	return &IPIP{env: env, cfg: env.Network.Backend, log: env.Log.WithField("backend", subnet.BackendIPIP)}, nil
}

// Type implements backend.Backend.
func (b *IPIP) Type() string { return subnet.BackendIPIP }

// Devices implements backend.Backend.
func (b *IPIP) Devices() []string { return []string{DeviceName} }

// MTU implements backend.Backend: the configured MTU, or the underlay's
// minus the encapsulation overhead.
func (b *IPIP) MTU() int {
	if b.cfg.MTU != 0 {
		return b.cfg.MTU
	}
	return b.env.Ext.MTU - Overhead
}

// Setup implements backend.Backend: it creates weft.ipip (local = this
// node's address, any remote) or reuses a compatible one. ipip publishes
// no backend data.
func (b *IPIP) Setup(context.Context) (backend.Published, error) {
	_, err := b.ensureDevice()
	return backend.Published{}, err
}

func (b *IPIP) ensureDevice() (netlink.Link, error) {
	h := b.env.Netlink
	local := net.IP(b.env.Ext.LocalIP.AsSlice())
	link, err := h.LinkByName(DeviceName)
	if err == nil {
		t, ok := link.(*netlink.Iptun)
		if !ok || !t.Local.Equal(local) || t.Remote != nil && !t.Remote.IsUnspecified() {
			b.log.WithField("device", DeviceName).Infof("re-creating the device: it is not an ipip tunnel from %s to any", local)
			if err := h.LinkDel(link); err != nil {
				return nil, fmt.Errorf("deleting incompatible device %s: %w", DeviceName, err)
			}
			link = nil
		}
	} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil, fmt.Errorf("looking up device %s: %w", DeviceName, err)
	} else {
		link = nil
	}
	if link == nil {
		err := h.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: DeviceName, MTU: b.MTU()}, Local: local, PMtuDisc: 1})
		if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EAFNOSUPPORT) {
			return nil, fmt.Errorf("creating %s: %w", DeviceName, ErrNoKernelSupport)
		}
		if err != nil {
			return nil, fmt.Errorf("creating ipip device %s (local %s): %w", DeviceName, local, err)
		}
		if link, err = h.LinkByName(DeviceName); err != nil {
			return nil, fmt.Errorf("looking up device %s: %w", DeviceName, err)
		}
		b.log.WithFields(logrus.Fields{"device": DeviceName, "local": local, "mtu": b.MTU()}).Info("created ipip device")
	}
	if link.Attrs().MTU != b.MTU() {
		if err := h.LinkSetMTU(link, b.MTU()); err != nil {
			return nil, fmt.Errorf("setting MTU %d on %s: %w", b.MTU(), DeviceName, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("bringing up %s: %w", DeviceName, err)
		}
	}
	return link, nil
}

// Sync implements backend.Backend.
func (b *IPIP) Sync(_ context.Context, self subnet.Lease, peers []*subnet.Lease) ([]backend.Route, []backend.PeerState, error) {
	states := make([]backend.PeerState, len(peers))
	b.index = 0
	link, err := b.ensureDevice()
	if err != nil {
		return nil, states, err
	}
	if err := backend.EnsureAddr(b.env.Netlink, link, netip.PrefixFrom(self.Subnet.Addr(), 32)); err != nil {
		return nil, states, err
	}
	b.index = link.Attrs().Index
	b.direct = backend.NewDirectRouter(b.env, b.cfg.DirectRouting) // the underlay as it is now
	routes := make([]backend.Route, 0, len(peers))
	for i, p := range peers {
		routes, states[i] = b.route(routes, p)
	}
	return routes, states, nil
}

// Update implements backend.Backend: ipip has only routes.
func (b *IPIP) Update(_ context.Context, _ subnet.Lease, changes []backend.Change) (backend.RouteDelta, []backend.PeerState, error) {
	if b.index == 0 || b.direct == nil {
		return backend.RouteDelta{}, nil, fmt.Errorf("%s has not been read yet; a full sync is needed", DeviceName)
	}
	var d backend.RouteDelta
	states := make([]backend.PeerState, len(changes))
	for i, c := range changes {
		if c.New != nil {
			d.Add, states[i] = b.route(d.Add, c.New)
		}
		if c.Old != nil {
			d.Del, _ = b.route(d.Del, c.Old)
		}
	}
	return d, states, nil
}

// route appends the route to p's subnet and returns p's state.
func (b *IPIP) route(routes []backend.Route, p *subnet.Lease) ([]backend.Route, backend.PeerState) {
	if !p.Subnet.IsValid() || !p.PublicIP.IsValid() {
		return routes, backend.Unreachable
	}
	if r, ok := b.direct.Route(p.Subnet, p.PublicIP); ok {
		return append(routes, r), backend.Direct
	}
	return append(routes, backend.Route{Dst: p.Subnet, Gw: p.PublicIP, LinkIndex: b.index, OnLink: true}), backend.Encapsulated
}

// Teardown implements backend.Backend.
func (b *IPIP) Teardown(context.Context) error {
	h := b.env.Netlink
	if link, err := h.LinkByName(DeviceName); err == nil {
		if err := h.LinkDel(link); err != nil {
			return fmt.Errorf("deleting device %s: %w", DeviceName, err)
		}
		b.log.WithField("device", DeviceName).Info("deleted ipip device")
	}
	return nil
}
