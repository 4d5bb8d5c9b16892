package proxy

import (
	"errors"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/service"
)

// udpFlow is where a UDP client's packets may be DNATed: to an endpoint,
// for a VIP and port (VIP valid) or a node port (VIP invalid). A UDP
// "connection" lives in conntrack as long as the client keeps sending, so
// when the endpoint goes its flows must be deleted or the client keeps
// sending to it (kube-proxy does the same).
type udpFlow struct {
	VIP      netip.Addr
	Port     uint16
	Endpoint netip.Addr
}

// udpFlows are the flows the admitted services allow.
func udpFlows(services []*service.Service) map[udpFlow]bool {
	flows := map[udpFlow]bool{}
	for _, s := range services {
		for _, p := range s.Ports {
			if p.Protocol != service.UDP {
				continue
			}
			for _, e := range s.Endpoints {
				if !e.IsReady() {
					continue
				}
				if vip, ok := s.VIP(e.Address.Is6()); ok {
					flows[udpFlow{VIP: vip, Port: p.Port, Endpoint: e.Address}] = true
				}
				if p.NodePort != 0 {
					flows[udpFlow{Port: p.NodePort, Endpoint: e.Address}] = true
				}
			}
		}
	}
	return flows
}

// Conntrack deletes conntrack entries; *netlink.Handle (or a
// netlinksafe.Handle) is one.
type Conntrack interface {
	ConntrackDeleteFilters(table netlink.ConntrackTableType, family netlink.InetFamily, filters ...netlink.CustomConntrackFilter) (uint, error)
}

// forgetFlows deletes the conntrack entries of flows gone.
func forgetFlows(ct Conntrack, gone []udpFlow) error {
	var v4, v6 []netlink.CustomConntrackFilter
	for _, f := range gone {
		filter := &netlink.ConntrackFilter{}
		err := errors.Join(
			filter.AddProtocol(unix.IPPROTO_UDP),
			filter.AddPort(netlink.ConntrackOrigDstPort, f.Port),
			filter.AddIP(netlink.ConntrackReplySrcIP, f.Endpoint.AsSlice()),
		)
		if f.VIP.IsValid() {
			err = errors.Join(err, filter.AddIP(netlink.ConntrackOrigDstIP, f.VIP.AsSlice()))
		}
		if err != nil {
			return err
		}
		if f.Endpoint.Is4() {
			v4 = append(v4, filter)
		} else {
			v6 = append(v6, filter)
		}
	}
	var errs []error
	if len(v4) > 0 {
		_, err := ct.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, v4...)
		errs = append(errs, err)
	}
	if len(v6) > 0 {
		_, err := ct.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET6, v6...)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
