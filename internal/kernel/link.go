package kernel

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"
)

// LinkSpec is a device weft wants: Link says its name, type, MTU and
// (optionally) MAC; Adopt says why an existing device of that name cannot
// be used as it is ("" when it can).
type LinkSpec struct {
	Link  netlink.Link
	Adopt func(have netlink.Link) (why string)
	// Replace deletes and re-creates a device Adopt refuses (a tunnel
	// nobody else uses); without it EnsureLink fails (the CNI bridge, which
	// carries running pods).
	Replace bool
}

// EnsureLink makes the device spec describes exist, with its MTU and MAC,
// and up: it adopts a compatible device of that name (left by an earlier
// run), re-creates or refuses an incompatible one, or creates it. It is
// idempotent and safe to run while another process creates the same device
// (the CNI plugin runs concurrently). Creation errors wrap the kernel's
// (errors.Is(err, syscall.EOPNOTSUPP) when it lacks the device type). log,
// if not nil, hears of devices created and re-created.
func EnsureLink(h netlinksafe.Handle, spec LinkSpec, log *logrus.Entry) (netlink.Link, error) {
	if log == nil {
		log = logrus.NewEntry(&logrus.Logger{Out: io.Discard, Formatter: new(logrus.TextFormatter)})
	}
	want := spec.Link.Attrs()
	name := want.Name
	link, err := h.LinkByName(name)
	switch {
	case errors.As(err, new(netlink.LinkNotFoundError)):
		link = nil
	case err != nil:
		return nil, fmt.Errorf("looking up device %s: %w", name, err)
	case spec.Adopt != nil:
		if why := spec.Adopt(link); why != "" {
			if !spec.Replace {
				return nil, fmt.Errorf("%s exists but %s", name, why)
			}
			log.WithField("device", name).Infof("re-creating the device: %s", why)
			if err := h.LinkDel(link); err != nil {
				return nil, fmt.Errorf("deleting incompatible device %s: %w", name, err)
			}
			link = nil
		}
	}
	if link == nil {
		if err := h.LinkAdd(spec.Link); err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, fmt.Errorf("creating %s device %s: %w", spec.Link.Type(), name, err)
		}
		if link, err = h.LinkByName(name); err != nil {
			return nil, fmt.Errorf("looking up device %s: %w", name, err)
		}
		log.WithFields(logrus.Fields{"device": name, "type": spec.Link.Type(), "mtu": want.MTU}).Info("created device")
	}
	have := link.Attrs()
	if want.MTU != 0 && have.MTU != want.MTU {
		if err := h.LinkSetMTU(link, want.MTU); err != nil {
			return nil, fmt.Errorf("setting MTU %d on %s: %w", want.MTU, name, err)
		}
		have.MTU = want.MTU
	}
	if len(want.HardwareAddr) > 0 && have.HardwareAddr.String() != want.HardwareAddr.String() {
		if err := h.LinkSetHardwareAddr(link, want.HardwareAddr); err != nil {
			return nil, fmt.Errorf("setting MAC %s on %s: %w", want.HardwareAddr, name, err)
		}
	}
	if have.Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("bringing up %s: %w", name, err)
		}
	}
	return link, nil
}

// DeleteLink deletes the device name if it exists, and reports whether it
// did.
func DeleteLink(h netlinksafe.Handle, name string) (bool, error) {
	link, err := h.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("looking up device %s: %w", name, err)
	}
	if err := h.LinkDel(link); err != nil {
		return false, fmt.Errorf("deleting device %s: %w", name, err)
	}
	return true, nil
}

// EnsureAddr makes addr the only global address of its family on link
// (link-local addresses stay).
func EnsureAddr(h netlinksafe.Handle, link netlink.Link, addr netip.Prefix) error {
	addrs, err := h.AddrList(link, family(addr.Addr()))
	if err != nil {
		return fmt.Errorf("listing addresses of %s: %w", link.Attrs().Name, err)
	}
	found := false
	for _, a := range addrs {
		p, ok := IPNetToPrefix(a.IPNet)
		if ok && p == addr {
			found = true
			continue
		}
		if ok && p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if err := h.AddrDel(link, &a); err != nil {
			return fmt.Errorf("deleting address %s from %s: %w", p, link.Attrs().Name, err)
		}
	}
	if !found {
		if err := h.AddrReplace(link, &netlink.Addr{IPNet: PrefixToIPNet(addr)}); err != nil {
			return fmt.Errorf("adding address %s to %s: %w", addr, link.Attrs().Name, err)
		}
	}
	return nil
}
