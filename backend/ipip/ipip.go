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

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/kernel"
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
	h     netlinksafe.Handle
	cfg   subnet.Backend
	log   *logrus.Entry
	ext   *backend.ExternalInterface
	index int // weft.ipip's index as the last Setup made it
}

var _ backend.Backend = (*IPIP)(nil)

// New returns the backend; it touches nothing until Setup.
func New(env backend.Env) (*IPIP, error) {
	if env.Network.IPv6.Enabled() {
		return nil, errors.New("ipip carries IPv4 only; for an IPv6 pod network use vxlan or host-gw")
	}
	return &IPIP{h: env.Netlink, cfg: env.Network.Backend, log: env.Log.WithField("backend", subnet.BackendIPIP)}, nil
}

// Type implements backend.Backend.
func (b *IPIP) Type() string { return subnet.BackendIPIP }

// Devices implements backend.Backend.
func (b *IPIP) Devices() []string { return []string{DeviceName} }

// Links implements backend.Backend: ipip has no neighbour or FDB entries.
func (b *IPIP) Links() []int { return nil }

// MTU implements backend.Backend: the configured MTU, or the underlay's
// minus the encapsulation overhead.
func (b *IPIP) MTU() int {
	if b.cfg.MTU != 0 {
		return b.cfg.MTU
	}
	if b.ext == nil {
		return 0
	}
	return b.ext.MTU - Overhead
}

// Setup implements backend.Backend: it creates weft.ipip (local = this
// node's address, any remote) or reuses a compatible one, and gives it the
// network address of self's subnet. ipip publishes no backend data.
func (b *IPIP) Setup(_ context.Context, ext *backend.ExternalInterface, self *subnet.Lease) (backend.Published, error) {
	if !ext.LocalIP.Is4() {
		return backend.Published{}, fmt.Errorf("ipip: the external interface %s has no IPv4 address to send from", ext.Name)
	}
	b.ext = ext
	local := net.IP(ext.LocalIP.AsSlice())
	spec := kernel.LinkSpec{
		Link: &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: DeviceName, MTU: b.MTU()}, Local: local, PMtuDisc: 1},
		Adopt: func(have netlink.Link) string {
			if t, ok := have.(*netlink.Iptun); !ok || !t.Local.Equal(local) || t.Remote != nil && !t.Remote.IsUnspecified() {
				return fmt.Sprintf("it is not an ipip tunnel from %s to any", local)
			}
			return ""
		},
		Replace: true,
	}
	link, err := kernel.EnsureLink(b.h, spec, b.log)
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EAFNOSUPPORT) {
		return backend.Published{}, fmt.Errorf("creating %s: %w", DeviceName, ErrNoKernelSupport)
	}
	if err != nil {
		return backend.Published{}, err
	}
	b.index = link.Attrs().Index
	if self.Subnet.IsValid() {
		if err := kernel.EnsureAddr(b.h, link, netip.PrefixFrom(self.Subnet.Addr(), 32)); err != nil {
			return backend.Published{}, err
		}
	}
	return backend.Published{}, nil
}

// Peer implements backend.Backend: with DirectRouting and the peer on this
// node's segment a plain route, otherwise a route through the tunnel.
func (b *IPIP) Peer(p *subnet.Lease, u *backend.Underlay, e *kernel.Entries) (backend.PeerState, string) {
	f := p.Family(false)
	if !f.Subnet.IsValid() || !f.PublicIP.IsValid() {
		return backend.Unreachable, "peer's lease has no IPv4 subnet or address; ipip carries IPv4 only"
	}
	if b.cfg.DirectRouting {
		if r, ok := u.Direct(f.Subnet, f.PublicIP); ok {
			e.Routes = append(e.Routes, r)
			return backend.Direct, ""
		}
	}
	e.Routes = append(e.Routes, kernel.Route{Dst: f.Subnet, Gw: f.PublicIP, LinkIndex: b.index, OnLink: true})
	return backend.Encapsulated, ""
}

// Teardown implements backend.Backend.
func (b *IPIP) Teardown(context.Context) error {
	deleted, err := kernel.DeleteLink(b.h, DeviceName)
	if deleted {
		b.log.WithField("device", DeviceName).Info("deleted ipip device")
	}
	b.index = 0
	return err
}
