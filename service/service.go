// Package service holds weft's service definitions: a stable virtual IP and
// port in front of a set of pod endpoints, as stored in etcd at
// <prefix>/services/<namespace>/<name> (one JSON document each), and the
// rules a definition must follow. Everything here is pure: no etcd, no
// kernel.
package service

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/weft-net/weft/subnet"
)

// Service is one service definition.
type Service struct {
	// Namespace and Name come from the key, not from the document.
	Namespace string `json:"-"`
	Name      string `json:"-"`
	// VIPs are the virtual IPs, at most one per address family.
	VIPs []netip.Addr `json:"vips"`
	// Ports are the ports the service answers on.
	Ports []Port `json:"ports"`
	// Endpoints are the pods behind it.
	Endpoints []Endpoint `json:"endpoints"`
	// TrafficPolicy is Cluster (any ready endpoint) or Local (traffic from
	// outside goes to endpoints on the node it arrives at, keeping the
	// client's address).
	TrafficPolicy Policy `json:"trafficPolicy"`
	// AffinityTimeoutSeconds, when set, sends a client (by address) to
	// the same endpoint until it has made no new connection for that long.
	AffinityTimeoutSeconds int `json:"affinityTimeoutSeconds,omitempty"`
	// Advertise, when set, says whether nodes announce the VIPs over BGP,
	// whatever BGP.AdvertiseServiceVIPs says.
	Advertise *bool `json:"advertise,omitempty"`
	// Communities go on the VIPs' BGP routes, besides the cluster's
	// ("ASN:VALUE").
	Communities []string `json:"communities,omitempty"`
	// Created is the etcd revision the definition was created at (0 when
	// not known): of two services that claim the same VIP and port, the
	// older keeps it (Admit).
	Created int64 `json:"-"`
}

// Port is one port of a service.
type Port struct {
	Name     string   `json:"name,omitempty"`
	Protocol Protocol `json:"protocol"`
	Port     uint16   `json:"port"`
	// TargetPort is the endpoints' port (default Port).
	TargetPort uint16 `json:"targetPort,omitempty"`
	// NodePort, if set, is opened on every node's addresses.
	NodePort uint16 `json:"nodePort,omitempty"`
}

// Target is the endpoints' port.
func (p Port) Target() uint16 {
	if p.TargetPort == 0 {
		return p.Port
	}
	return p.TargetPort
}

func (p Port) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Protocol) }

// Endpoint is one pod behind a service.
type Endpoint struct {
	Address netip.Addr `json:"address"`
	// Ready, when false, keeps new connections away from the endpoint.
	// Absent means ready.
	Ready *bool `json:"ready,omitempty"`
}

// IsReady reports whether new connections may go to e.
func (e Endpoint) IsReady() bool { return e.Ready == nil || *e.Ready }

// Protocol is TCP, UDP or SCTP.
type Protocol string

// Protocols.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// Number is the protocol's IP protocol number.
func (p Protocol) Number() uint8 {
	switch p {
	case UDP:
		return 17
	case SCTP:
		return 132
	}
	return 6
}

// Policy is a traffic policy.
type Policy string

// Traffic policies, as Kubernetes' externalTrafficPolicy.
const (
	Cluster Policy = "Cluster"
	Local   Policy = "Local"
)

// Key is "NAMESPACE/NAME".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// Affinity is the session affinity timeout, 0 for none.
func (s *Service) Affinity() time.Duration {
	return time.Duration(s.AffinityTimeoutSeconds) * time.Second
}

// VIP returns the service's virtual IP of one family.
func (s *Service) VIP(ipv6 bool) (netip.Addr, bool) {
	for _, v := range s.VIPs {
		if v.Is6() == ipv6 {
			return v, true
		}
	}
	return netip.Addr{}, false
}

// Equal reports whether s and o define the same service.
func (s *Service) Equal(o *Service) bool {
	a, _ := json.Marshal(s)
	b, _ := json.Marshal(o)
	return s.Namespace == o.Namespace && s.Name == o.Name && bytes.Equal(a, b)
}

// Definition is what a key under <prefix>/services/ holds, as read: a
// service, or why it is not one (Err, and Service nil).
type Definition struct {
	Service *Service
	Err     error
}

// MaxValue is the largest definition weft decodes.
const MaxValue = 1 << 20

// nameRe is a DNS-1123 label, as Kubernetes names namespaces and services.
var nameRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ParseName splits "NAMESPACE/NAME" (a key below <prefix>/services/) and
// checks both parts.
func ParseName(s string) (namespace, name string, err error) {
	namespace, name, ok := strings.Cut(s, "/")
	if !ok || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("%q is not NAMESPACE/NAME", s)
	}
	for _, part := range []struct{ what, v string }{{"namespace", namespace}, {"name", name}} {
		if !nameRe.MatchString(part.v) {
			return "", "", fmt.Errorf("%s %q is not a DNS label: lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit", part.what, part.v)
		}
	}
	return namespace, name, nil
}

// wire is a definition as stored, with addresses as strings so that a bad
// one can be named.
type wire struct {
	VIPs  []string `json:"vips"`
	Ports []struct {
		Name       string `json:"name,omitempty"`
		Protocol   string `json:"protocol"`
		Port       int64  `json:"port"`
		TargetPort int64  `json:"targetPort,omitempty"`
		NodePort   int64  `json:"nodePort,omitempty"`
	} `json:"ports"`
	Endpoints []struct {
		Address string `json:"address"`
		Ready   *bool  `json:"ready,omitempty"`
	} `json:"endpoints"`
	TrafficPolicy          Policy   `json:"trafficPolicy"`
	AffinityTimeoutSeconds int      `json:"affinityTimeoutSeconds,omitempty"`
	Advertise              *bool    `json:"advertise,omitempty"`
	Communities            []string `json:"communities,omitempty"`
}

// Parse decodes a definition from its key (NAMESPACE/NAME) and value. It
// checks only the format; Validate checks it against the network.
func Parse(key string, value []byte) (*Service, error) {
	ns, name, err := ParseName(key)
	if err != nil {
		return nil, fmt.Errorf("service key %w", err)
	}
	if len(value) > MaxValue {
		return nil, fmt.Errorf("service %s: value of %d bytes is larger than the %d a service may have", key, len(value), MaxValue)
	}
	var w wire
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("service %s: %w", key, describeJSON(err))
	}
	s := &Service{Namespace: ns, Name: name, TrafficPolicy: w.TrafficPolicy, AffinityTimeoutSeconds: w.AffinityTimeoutSeconds,
		Advertise: w.Advertise, Communities: w.Communities}
	for i, p := range w.Ports {
		for _, f := range []struct {
			name string
			v    int64
		}{{"port", p.Port}, {"targetPort", p.TargetPort}, {"nodePort", p.NodePort}} {
			if f.v < 0 || f.v > 65535 {
				return nil, &ValidationError{Service: key, Field: fmt.Sprintf("ports[%d].%s", i, f.name), Msg: fmt.Sprintf("%d is out of range; use 1 to 65535", f.v)}
			}
		}
		s.Ports = append(s.Ports, Port{Name: p.Name, Protocol: Protocol(strings.ToUpper(p.Protocol)),
			Port: uint16(p.Port), TargetPort: uint16(p.TargetPort), NodePort: uint16(p.NodePort)})
	}
	for i, v := range w.VIPs {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, &ValidationError{Service: key, Field: fmt.Sprintf("vips[%d]", i), Msg: fmt.Sprintf("%q is not an IP address", v)}
		}
		s.VIPs = append(s.VIPs, a)
	}
	for i, e := range w.Endpoints {
		a, err := netip.ParseAddr(e.Address)
		if err != nil {
			return nil, &ValidationError{Service: key, Field: fmt.Sprintf("endpoints[%d].address", i), Msg: fmt.Sprintf("%q is not an IP address", e.Address)}
		}
		s.Endpoints = append(s.Endpoints, Endpoint{Address: a, Ready: e.Ready})
	}
	if s.TrafficPolicy == "" {
		s.TrafficPolicy = Cluster
	}
	return s, nil
}

func describeJSON(err error) error {
	var typ *json.UnmarshalTypeError
	var syn *json.SyntaxError
	switch {
	case errors.As(err, &syn), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return fmt.Errorf("not valid JSON: %v", err)
	case errors.As(err, &typ):
		return fmt.Errorf("%s: %s where %s was expected", typ.Field, typ.Value, typ.Type)
	}
	return err
}

// Marshal encodes s as it is stored.
func (s *Service) Marshal() []byte {
	b, _ := json.Marshal(s)
	return b
}

// BGPCommunities are the service's communities; it must be valid.
func (s *Service) BGPCommunities() []subnet.Community {
	out := make([]subnet.Community, 0, len(s.Communities))
	for _, c := range s.Communities {
		if v, err := subnet.ParseCommunity(c); err == nil {
			out = append(out, v)
		}
	}
	return out
}

// ValidationError is a definition weft refuses; Field names the field
// ("ports[0].nodePort").
type ValidationError struct {
	Service string
	Field   string
	Msg     string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("service %s: %s %s", e.Service, e.Field, e.Msg)
}

// Validate checks s against the network: every VIP in the service network
// of its family and outside the pod network, at most one VIP per family,
// ports from 1 to 65535 with a known protocol and each once, node ports in
// the range, endpoints as addresses, a known traffic policy and a sane
// affinity timeout. It does not look at other services (see Conflicts).
func (s *Service) Validate(cfg *subnet.Config) error {
	bad := func(field, format string, args ...any) error {
		return &ValidationError{Service: s.Key(), Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if !cfg.Services.Enabled() {
		return bad("vips", "cannot be given: the network configuration has no ServiceNetwork (or ServiceIPv6Network)")
	}
	if len(s.VIPs) == 0 {
		return bad("vips", "is empty; give a virtual IP, or let weftctl allocate one")
	}
	families := map[bool]bool{}
	for i, v := range s.VIPs {
		field := fmt.Sprintf("vips[%d]", i)
		if !v.IsValid() || v.Zone() != "" || v.Is4In6() {
			return bad(field, "%q is not an IP address", v)
		}
		if families[v.Is6()] {
			return bad(field, "%s is a second %s VIP; a service has at most one per family", v, famName(v))
		}
		families[v.Is6()] = true
		network := cfg.Services.Network(v)
		for _, pool := range cfg.Pools() {
			if pool.Network.Contains(v) {
				return bad(field, "%s is inside the pod network %s; a VIP is not a pod address", v, pool.Network)
			}
		}
		if !network.IsValid() {
			return bad(field, "%s is %s but the network has no %s", v, famName(v), map[bool]string{false: "ServiceNetwork", true: "ServiceIPv6Network"}[v.Is6()])
		}
		if !network.Contains(v) || v == network.Addr() {
			return bad(field, "%s is outside the service network %s", v, network)
		}
	}
	if len(s.Ports) == 0 {
		return bad("ports", "is empty; give at least one port")
	}
	seen := map[string]int{}
	for i, p := range s.Ports {
		field := fmt.Sprintf("ports[%d]", i)
		switch p.Protocol {
		case TCP, UDP, SCTP:
		default:
			return bad(field+".protocol", "%q is unknown; use TCP, UDP or SCTP", p.Protocol)
		}
		if p.Port == 0 {
			return bad(field+".port", "0 is out of range; use 1 to 65535")
		}
		if j, dup := seen[p.String()]; dup {
			return bad(field+".port", "%s is given twice (also ports[%d])", p, j)
		}
		seen[p.String()] = i
		if p.NodePort != 0 {
			if p.NodePort < cfg.Services.NodePortMin || p.NodePort > cfg.Services.NodePortMax {
				return bad(field+".nodePort", "%d is outside the node port range %d-%d", p.NodePort, cfg.Services.NodePortMin, cfg.Services.NodePortMax)
			}
			np := fmt.Sprintf("node %d/%s", p.NodePort, p.Protocol)
			if j, dup := seen[np]; dup {
				return bad(field+".nodePort", "%d/%s is given twice (also ports[%d])", p.NodePort, p.Protocol, j)
			}
			seen[np] = i
		}
	}
	eps := map[netip.Addr]int{}
	for i, e := range s.Endpoints {
		field := fmt.Sprintf("endpoints[%d].address", i)
		if !e.Address.IsValid() || e.Address.Zone() != "" || e.Address.Is4In6() {
			return bad(field, "is not an IP address")
		}
		if j, dup := eps[e.Address]; dup {
			return bad(field, "%s is given twice (also endpoints[%d])", e.Address, j)
		}
		eps[e.Address] = i
		if _, ok := s.VIP(e.Address.Is6()); !ok {
			return bad(field, "%s is %s but the service has no %s VIP", e.Address, famName(e.Address), famName(e.Address))
		}
	}
	switch s.TrafficPolicy {
	case Cluster, Local:
	default:
		return bad("trafficPolicy", "%q is unknown; use Cluster or Local", s.TrafficPolicy)
	}
	for i, c := range s.Communities {
		if _, err := subnet.ParseCommunity(c); err != nil {
			return bad(fmt.Sprintf("communities[%d]", i), "%v", err)
		}
	}
	if s.AffinityTimeoutSeconds < 0 || s.AffinityTimeoutSeconds > 86400 {
		return bad("affinityTimeoutSeconds", "%d is out of range; use 1 to 86400 (0 or absent: no affinity)", s.AffinityTimeoutSeconds)
	}
	return nil
}

func famName(a netip.Addr) string {
	if a.Is6() {
		return "IPv6"
	}
	return "IPv4"
}

// Conflict is a service refused because another holds what it claims.
type Conflict struct {
	Service, Other string
	Claim          Claim
}

func (c *Conflict) Error() string {
	return fmt.Sprintf("service %s: %s is already used by %s", c.Service, c.Claim, c.Other)
}

// Claim is something no two services may share: a VIP and port, or (VIP
// invalid) a node port.
type Claim struct {
	VIP      netip.Addr
	Protocol Protocol
	Port     uint16
}

func (c Claim) String() string {
	if !c.VIP.IsValid() {
		return fmt.Sprintf("node port %d/%s", c.Port, c.Protocol)
	}
	return fmt.Sprintf("VIP %s port %d/%s", c.VIP, c.Port, c.Protocol)
}

// Claims are what s holds: each VIP and port, and each node port.
func (s *Service) Claims() []Claim {
	out := make([]Claim, 0, len(s.Ports)*(len(s.VIPs)+1))
	for _, p := range s.Ports {
		for _, v := range s.VIPs {
			out = append(out, Claim{VIP: v, Protocol: p.Protocol, Port: p.Port})
		}
		if p.NodePort != 0 {
			out = append(out, Claim{Protocol: p.Protocol, Port: p.NodePort})
		}
	}
	return out
}

// Admit decides which of a set of valid services may be programmed: of
// services that claim the same VIP and port or node port, the one created
// first keeps it (by etcd revision, then by key), so that every node
// refuses the same one and a service that works is never displaced by a
// newer one written around weftctl. It returns the admitted services,
// sorted by key, and a Conflict for each refused one.
func Admit(all []*Service) (admitted []*Service, refused []error) {
	sorted := slices.Clone(all)
	slices.SortFunc(sorted, func(a, b *Service) int {
		if a.Created != b.Created {
			return cmp.Compare(a.Created, b.Created)
		}
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	owner := make(map[Claim]*Service, len(sorted))
	for _, s := range sorted {
		claims := s.Claims()
		var conflict error
		for _, c := range claims {
			if o, taken := owner[c]; taken && o != s {
				conflict = &Conflict{Service: s.Key(), Other: o.Key(), Claim: c}
				break
			}
		}
		if conflict != nil {
			refused = append(refused, conflict)
			continue
		}
		for _, c := range claims {
			owner[c] = s
		}
		admitted = append(admitted, s)
	}
	slices.SortFunc(admitted, func(a, b *Service) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return admitted, refused
}
