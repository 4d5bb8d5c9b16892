package netmon

import (
	"context"
	"net"
	"slices"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/internal/kernel"
	"github.com/weft-net/weft/internal/mailbox"
	"github.com/weft-net/weft/internal/ratelog"
	"github.com/weft-net/weft/internal/retry"
)

// rereadDelay is how long after an event of the external interface it is
// read again, so that an address being replaced (deleted, then added) is
// seen once, replaced.
const rereadDelay = 100 * time.Millisecond

// Monitor watches the kernel of weftd's namespace. It sends a new
// snapshot of the external interface whenever its MTU or addresses change,
// and signals drift whenever a route weft owns, a permanent neighbour or
// FDB entry, or a device is deleted, or another route changes (so that
// DirectRouting follows the underlay). Run is its goroutine; the channels
// are safe to read from another.
type Monitor struct {
	h     netlinksafe.Handle
	sel   *Selection
	log   *logrus.Entry
	cur   *backend.ExternalInterface // the last snapshot sent; owned by Run
	gone  ratelog.Limiter
	ifs   *mailbox.Mailbox[*backend.ExternalInterface]
	drift chan struct{}
}

// NewMonitor returns a monitor of the interface ext (a snapshot Choose
// made) that reads the kernel through h, which it does not share.
func NewMonitor(h netlinksafe.Handle, ext *backend.ExternalInterface, sel *Selection, log *logrus.Entry) *Monitor {
	return &Monitor{
		h: h, sel: sel, cur: ext, log: log.WithField("component", "netmon"),
		ifs: mailbox.New[*backend.ExternalInterface](), drift: make(chan struct{}, 1),
	}
}

// Interfaces delivers each new snapshot of the external interface; a
// reader that falls behind gets the newest.
func (m *Monitor) Interfaces() <-chan *backend.ExternalInterface { return m.ifs.C() }

// Drift signals that weft's kernel state may have changed under it.
func (m *Monitor) Drift() <-chan struct{} { return m.drift }

func (m *Monitor) poke() {
	select {
	case m.drift <- struct{}{}:
	default:
	}
}

// subscription is one generation of netlink subscriptions. netlink runs
// a goroutine per subscription that ends, closing its channel, once done
// is closed; close waits for them.
type subscription struct {
	done   chan struct{}
	routes chan netlink.RouteUpdate
	neighs chan netlink.NeighUpdate
	links  chan netlink.LinkUpdate
	addrs  chan netlink.AddrUpdate
	drains []func() // one per subscribed channel: read it until closed
}

func (m *Monitor) subscribe() (*subscription, error) {
	s := &subscription{
		done:   make(chan struct{}),
		routes: make(chan netlink.RouteUpdate, 256),
		neighs: make(chan netlink.NeighUpdate, 256),
		links:  make(chan netlink.LinkUpdate, 64),
		addrs:  make(chan netlink.AddrUpdate, 64),
	}
	// The sockets keep the kernel's default buffers: a burst (weft's own
	// thousands of routes at start) overflows them, which ends the
	// subscription; Run then subscribes again and signals drift. Bigger
	// buffers would only make weftd parse thousands of its own events.
	onErr := func(err error) { m.log.WithError(err).Debug("netlink subscription") }
	steps := []struct {
		subscribe func() error
		drain     func()
	}{
		{func() error {
			return netlink.RouteSubscribeWithOptions(s.routes, s.done, netlink.RouteSubscribeOptions{ErrorCallback: onErr})
		}, func() { drain(s.routes) }},
		{func() error {
			return netlink.NeighSubscribeWithOptions(s.neighs, s.done, netlink.NeighSubscribeOptions{ErrorCallback: onErr})
		}, func() { drain(s.neighs) }},
		{func() error {
			return netlink.LinkSubscribeWithOptions(s.links, s.done, netlink.LinkSubscribeOptions{ErrorCallback: onErr})
		}, func() { drain(s.links) }},
		{func() error {
			return netlink.AddrSubscribeWithOptions(s.addrs, s.done, netlink.AddrSubscribeOptions{ErrorCallback: onErr})
		}, func() { drain(s.addrs) }},
	}
	for _, step := range steps {
		if err := step.subscribe(); err != nil {
			s.close()
			return nil, err
		}
		s.drains = append(s.drains, step.drain)
	}
	return s, nil
}

// close ends the subscriptions and waits for netlink's goroutines.
func (s *subscription) close() {
	close(s.done)
	for _, d := range s.drains {
		d()
	}
}

// drain reads c until it is closed.
func drain[T any](c chan T) {
	for range c {
	}
}

// Run watches until ctx ends. If the kernel drops events (a subscription
// ends, as when its socket overflows), it subscribes again and signals
// drift, so that nothing missed goes unrepaired.
func (m *Monitor) Run(ctx context.Context) error {
	var b retry.Backoff
	for {
		s, err := m.subscribe()
		if err != nil {
			m.log.WithError(err).Warn("cannot watch the kernel; relying on the periodic resync")
		} else {
			m.watch(ctx, s)
			s.close()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		m.poke()
		m.reread()
		if !b.Wait(ctx) {
			return ctx.Err()
		}
	}
}

// watch handles the events of one subscription until ctx ends or one of
// its channels closes.
func (m *Monitor) watch(ctx context.Context, s *subscription) {
	var reread <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-reread:
			reread = nil
			m.reread()
		case u, ok := <-s.routes:
			if !ok {
				return
			}
			// A route of weft's deleted: drift. Any other route change: the
			// underlay changed, and DirectRouting decisions may with it.
			if u.Protocol != kernel.RouteProtocol || u.Type == unix.RTM_DELROUTE {
				m.poke()
			}
		case u, ok := <-s.neighs:
			if !ok {
				return
			}
			if u.Type == unix.RTM_DELNEIGH && u.State&netlink.NUD_PERMANENT != 0 {
				m.poke()
			}
		case u, ok := <-s.links:
			if !ok {
				return
			}
			// A device deleted (drift), or the external interface changing
			// state or MTU.
			if u.Header.Type == unix.RTM_DELLINK || int(u.Index) == m.cur.Index {
				m.poke()
			}
			if int(u.Index) == m.cur.Index && reread == nil {
				reread = time.After(rereadDelay)
			}
		case u, ok := <-s.addrs:
			if !ok {
				return
			}
			if u.LinkIndex == m.cur.Index {
				m.poke()
				if reread == nil {
					reread = time.After(rereadDelay)
				}
			}
		}
	}
}

// reread reads the external interface again and sends a new snapshot if
// its MTU or addresses changed. Going down and up needs no snapshot: the
// kernel drops the routes through a link that goes down, and the sync the
// drift signal causes restores them when it comes up.
func (m *Monitor) reread() {
	link, err := m.h.LinkByIndex(m.cur.Index)
	if err != nil {
		m.gone.Warn(m.log.WithError(err).WithField("interface", m.cur.Name), m.cur.Name,
			"the external interface is gone; keeping the kernel state as it is")
		return
	}
	m.gone.Forget(m.cur.Name)
	addrs, err := globalAddrs(m.h, link)
	if err != nil {
		return
	}
	if link.Attrs().Flags&net.FlagUp != 0 && len(addrs) == 0 {
		return // addresses are being replaced; wait for the new one
	}
	fresh := describe(link, addrs, m.sel)
	if fresh.MTU == m.cur.MTU && slices.Equal(fresh.Addrs, m.cur.Addrs) {
		return
	}
	m.cur = fresh
	m.ifs.Send(fresh)
}
