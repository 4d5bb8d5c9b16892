package subnet

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Services is what net-conf.json says about services: the networks their
// virtual IPs come from and the range of node ports.
type Services struct {
	// IPv4 and IPv6 are ServiceNetwork and ServiceIPv6Network; invalid
	// when not given.
	IPv4, IPv6 netip.Prefix
	// NodePortMin and NodePortMax bound the node ports (NodePortRange,
	// default 30000-32767).
	NodePortMin, NodePortMax uint16
}

// Enabled reports whether services can have virtual IPs.
func (s Services) Enabled() bool { return s.IPv4.IsValid() || s.IPv6.IsValid() }

// Network returns the service network of ip's family.
func (s Services) Network(ip netip.Addr) netip.Prefix {
	if ip.Is4() {
		return s.IPv4
	}
	return s.IPv6
}

// Default node port range, as Kubernetes'.
const (
	DefaultNodePortMin = 30000
	DefaultNodePortMax = 32767
)

// parseServices reads ServiceNetwork, ServiceIPv6Network and
// NodePortRange, and checks that the service networks overlap neither
// pod network.
func parseServices(obj *object, cfg *Config) (Services, error) {
	s := Services{NodePortMin: DefaultNodePortMin, NodePortMax: DefaultNodePortMax}
	for _, f := range []struct {
		key     string
		ipv6    bool
		dst     *netip.Prefix
		example string
	}{
		{"ServiceNetwork", false, &s.IPv4, "100.64.0.0/16"},
		{"ServiceIPv6Network", true, &s.IPv6, "fd64::/108"},
	} {
		if _, given := obj.fields[f.key]; !given {
			continue
		}
		v, err := obj.str(f.key)
		if err != nil {
			return Services{}, err
		}
		p, err := netip.ParsePrefix(v)
		if err != nil || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return Services{}, configErr(f.key, "%s %q is not a valid CIDR; give it as address/length, e.g. %q", f.key, v, f.example)
		}
		if p.Addr().Is6() != f.ipv6 {
			return Services{}, configErr(f.key, "%s %q is not an IPv%d network", f.key, v, map[bool]int{false: 4, true: 6}[f.ipv6])
		}
		if p.Masked() != p {
			return Services{}, configErr(f.key, "%s %q has host bits set; did you mean %q?", f.key, v, p.Masked().String())
		}
		if p.Bits() > p.Addr().BitLen()-2 {
			return Services{}, configErr(f.key, "%s %q is too small; it must hold at least two addresses", f.key, v)
		}
		for _, pool := range cfg.Pools() {
			if pool.Network.Overlaps(p) {
				return Services{}, configErr(f.key, "%s %s overlaps the pod network %s; virtual IPs must not be pod addresses", f.key, p, pool.Network)
			}
		}
		*f.dst = p
	}
	if _, given := obj.fields["NodePortRange"]; given {
		v, err := obj.str("NodePortRange")
		if err != nil {
			return Services{}, err
		}
		lo, hi, ok := strings.Cut(v, "-")
		min, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
		max, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
		if !ok || err1 != nil || err2 != nil || min == 0 || min > max {
			return Services{}, configErr("NodePortRange", "NodePortRange %q is not a range of ports such as \"30000-32767\"", v)
		}
		s.NodePortMin, s.NodePortMax = uint16(min), uint16(max)
	}
	return s, nil
}

func (s Services) String() string {
	var nets []string
	for _, p := range []netip.Prefix{s.IPv4, s.IPv6} {
		if p.IsValid() {
			nets = append(nets, p.String())
		}
	}
	return fmt.Sprintf("%s, node ports %d-%d", strings.Join(nets, " and "), s.NodePortMin, s.NodePortMax)
}
