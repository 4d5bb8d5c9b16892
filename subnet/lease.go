package subnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// MaxLeaseValue is the largest lease value weft decodes; anything larger is
// not a lease any flannel-compatible node writes.
const MaxLeaseValue = 64 << 10

// Lease is one node's claim on a subnet (or an IPv4 and an IPv6 subnet), as
// stored under <prefix>/subnets/<key>.
type Lease struct {
	Subnet     netip.Prefix // IPv4; invalid when the node has none
	IPv6Subnet netip.Prefix // invalid when the node has none
	Attrs
}

// Attrs is the lease value: how peers reach the node. Its JSON form is
// flannel's LeaseAttrs plus weft's Node.
type Attrs struct {
	PublicIP      netip.Addr
	PublicIPv6    netip.Addr
	BackendType   string
	BackendData   json.RawMessage
	BackendV6Data json.RawMessage
	Node          string
}

// Family is one address family's part of a lease: its subnet, the
// address peers reach the node at for it, and the backend's data for it
// (flannel's BackendV6Data for IPv6). Code that handles addresses gets a
// lease's families here and loops over them, one code path for both.
type Family struct {
	IPv6        bool
	Subnet      netip.Prefix
	PublicIP    netip.Addr
	BackendData json.RawMessage
}

// Name is "IPv4" or "IPv6", for messages.
func (f Family) Name() string { return familyName(f.IPv6) }

func familyName(ipv6 bool) string {
	if ipv6 {
		return "IPv6"
	}
	return "IPv4"
}

// Family returns l's part for one family; its Subnet is invalid when l has
// no subnet of that family.
func (l *Lease) Family(ipv6 bool) Family {
	if ipv6 {
		return Family{IPv6: true, Subnet: l.IPv6Subnet, PublicIP: l.PublicIPv6, BackendData: l.BackendV6Data}
	}
	return Family{Subnet: l.Subnet, PublicIP: l.PublicIP, BackendData: l.BackendData}
}

// Families yields the families l has a subnet of, IPv4 first:
// `for f := range l.Families`.
func (l *Lease) Families(yield func(Family) bool) {
	if l.Subnet.IsValid() && !yield(l.Family(false)) {
		return
	}
	if l.IPv6Subnet.IsValid() {
		yield(l.Family(true))
	}
}

// Subnets yields l's subnets, IPv4 first.
func (l *Lease) Subnets(yield func(netip.Prefix) bool) {
	if l.Subnet.IsValid() && !yield(l.Subnet) {
		return
	}
	if l.IPv6Subnet.IsValid() {
		yield(l.IPv6Subnet)
	}
}

// Equal reports whether l and o say the same.
func (l *Lease) Equal(o *Lease) bool {
	return l.Subnet == o.Subnet && l.IPv6Subnet == o.IPv6Subnet && l.Attrs.Equal(&o.Attrs)
}

// Equal reports whether a and o say the same.
func (a *Attrs) Equal(o *Attrs) bool {
	return a.PublicIP == o.PublicIP && a.PublicIPv6 == o.PublicIPv6 &&
		a.BackendType == o.BackendType && a.Node == o.Node &&
		bytes.Equal(a.BackendData, o.BackendData) && bytes.Equal(a.BackendV6Data, o.BackendV6Data)
}

// Key returns the lease's key below <prefix>/subnets/.
func (l Lease) Key() string { return MakeKey(l.Subnet, l.IPv6Subnet) }

// MakeKey returns flannel's key for a subnet pair: "100.96.3.0-24",
// "100.96.3.0-24&fd96:0:0:3::-64", or "fd96:0:0:3::-64" for IPv6 only.
func MakeKey(v4, v6 netip.Prefix) string {
	switch {
	case v4.IsValid() && v6.IsValid():
		return keyPart(v4) + "&" + keyPart(v6)
	case v4.IsValid():
		return keyPart(v4)
	default:
		return keyPart(v6)
	}
}

func keyPart(p netip.Prefix) string {
	return p.Addr().String() + "-" + strconv.Itoa(p.Bits())
}

// ParseKey parses a key made by MakeKey (or by flannel, which writes
// "0.0.0.0-0&<ipv6>" for IPv6-only nodes).
func ParseKey(key string) (v4, v6 netip.Prefix, err error) {
	first, second, dual := strings.Cut(key, "&")
	a, err := parseKeyPart(first)
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("lease key %q: %w", key, err)
	}
	if !dual {
		if a.Addr().Is4() {
			return a, netip.Prefix{}, nil
		}
		return netip.Prefix{}, a, nil
	}
	b, err := parseKeyPart(second)
	if err != nil {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("lease key %q: %w", key, err)
	}
	if !a.Addr().Is4() || !b.Addr().Is6() {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("lease key %q: a dual-stack key is <ipv4>-<len>&<ipv6>-<len>", key)
	}
	if a.Addr().IsUnspecified() && a.Bits() == 0 {
		a = netip.Prefix{}
	}
	return a, b, nil
}

func parseKeyPart(s string) (netip.Prefix, error) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("%q is not <address>-<length>", s)
	}
	addr, err := netip.ParseAddr(s[:i])
	if err != nil || addr.Zone() != "" || addr.Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address", s[:i])
	}
	bits, err := strconv.Atoi(s[i+1:])
	if err != nil || s[i+1:] != strconv.Itoa(bits) {
		return netip.Prefix{}, fmt.Errorf("%q is not a prefix length", s[i+1:])
	}
	p, err := addr.Prefix(bits)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("/%d is not a valid prefix length for %s", bits, addr)
	}
	if p.Addr() != addr {
		return netip.Prefix{}, fmt.Errorf("%s-%d has host bits set", addr, bits)
	}
	return p, nil
}

// wireAttrs is the lease value on the wire. PublicIP is always present
// because flannel cannot read a lease without it; "0.0.0.0" means none.
type wireAttrs struct {
	PublicIP      string
	PublicIPv6    *string
	BackendType   string
	BackendData   json.RawMessage
	BackendV6Data json.RawMessage
	Node          string `json:",omitempty"`
}

// MarshalJSON encodes the attributes in flannel's format.
func (a Attrs) MarshalJSON() ([]byte, error) {
	w := wireAttrs{
		PublicIP:      "0.0.0.0",
		BackendType:   a.BackendType,
		BackendData:   a.BackendData,
		BackendV6Data: a.BackendV6Data,
		Node:          a.Node,
	}
	if a.PublicIP.IsValid() {
		w.PublicIP = a.PublicIP.String()
	}
	if a.PublicIPv6.IsValid() {
		s := a.PublicIPv6.String()
		w.PublicIPv6 = &s
	}
	return json.Marshal(w)
}

// UnmarshalJSON decodes flannel's format, keys matched case-insensitively.
func (a *Attrs) UnmarshalJSON(data []byte) error {
	var w wireAttrs
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	var out Attrs
	if w.PublicIP != "" && w.PublicIP != "0.0.0.0" {
		ip, err := netip.ParseAddr(w.PublicIP)
		if err != nil || !ip.Is4() {
			return fmt.Errorf("PublicIP %q is not an IPv4 address", w.PublicIP)
		}
		out.PublicIP = ip
	}
	if w.PublicIPv6 != nil && *w.PublicIPv6 != "" && *w.PublicIPv6 != "::" {
		ip, err := netip.ParseAddr(*w.PublicIPv6)
		if err != nil || !ip.Is6() || ip.Is4In6() || ip.Zone() != "" {
			return fmt.Errorf("PublicIPv6 %q is not an IPv6 address", *w.PublicIPv6)
		}
		out.PublicIPv6 = ip
	}
	out.BackendType = w.BackendType
	out.BackendData = nullToNil(w.BackendData)
	out.BackendV6Data = nullToNil(w.BackendV6Data)
	out.Node = w.Node
	*a = out
	return nil
}

func nullToNil(m json.RawMessage) json.RawMessage {
	if len(m) == 0 || string(m) == "null" {
		return nil
	}
	return bytes.Clone(m)
}

// ParseLease decodes a lease from its key (the part after
// <prefix>/subnets/) and its value. It checks only the format; see
// Config.CheckLease for whether the lease fits the network.
func ParseLease(key string, value []byte) (Lease, error) {
	v4, v6, err := ParseKey(key)
	if err != nil {
		return Lease{}, err
	}
	if len(value) > MaxLeaseValue {
		return Lease{}, fmt.Errorf("lease %s: value of %d bytes is larger than the %d a lease may have", key, len(value), MaxLeaseValue)
	}
	l := Lease{Subnet: v4, IPv6Subnet: v6}
	if err := json.Unmarshal(value, &l.Attrs); err != nil {
		return Lease{}, fmt.Errorf("lease %s: value is not a lease: %w", key, err)
	}
	return l, nil
}

// ErrWrongFamily is wrapped by CheckLease for a lease that lacks a subnet or
// public address of a family the network uses.
var ErrWrongFamily = errors.New("wrong address family")

// CheckLease reports whether l is a lease this network can route to: each
// enabled family has a subnet inside its pool and a public address to reach
// it by. Subnets of families the network does not use are allowed (a
// dual-stack node in an IPv4 network) and ignored.
func (c *Config) CheckLease(l *Lease) error {
	for _, pool := range c.Pools() {
		f := l.Family(pool.IPv6())
		if !f.Subnet.IsValid() {
			return fmt.Errorf("lease %s has no %s subnet but the network is %s: %w", l.Key(), f.Name(), pool.Network, ErrWrongFamily)
		}
		// SubnetMin and SubnetMax bound where new subnets are allocated: a
		// lease anywhere in the network is a valid peer (kube-controller-
		// manager hands out the first subnet too; a narrowed range must not
		// cut nodes off).
		if !pool.InNetwork(f.Subnet) {
			return fmt.Errorf("lease %s: subnet %s is not inside the network %s", l.Key(), f.Subnet, pool.Network)
		}
		if !f.PublicIP.IsValid() {
			return fmt.Errorf("lease %s has no public %s address: %w", l.Key(), f.Name(), ErrWrongFamily)
		}
	}
	return nil
}

// VtepMAC returns the VTEP MAC address a vxlan lease publishes in its
// BackendData, or nil.
func (a *Attrs) VtepMAC() net.HardwareAddr { return VtepMAC(a.BackendData) }

// VtepMAC returns the VtepMAC of vxlan backend data (BackendData or
// BackendV6Data), or nil.
func VtepMAC(data json.RawMessage) net.HardwareAddr {
	if mac, ok := canonicalVtepMAC(data); ok {
		return mac
	}
	var d struct{ VtepMAC string }
	if json.Unmarshal(data, &d) != nil {
		return nil
	}
	mac, err := net.ParseMAC(d.VtepMAC)
	if err != nil {
		return nil
	}
	return mac
}

// canonicalVtepMAC reads the VtepMAC of backend data in the exact form
// flannel and weft write, {"VNI":1,"VtepMAC":"0e:..."}, without the JSON
// decoder (a full sync at 10,000 peers reads 10,000 of them); ok is false
// for any other form, which the decoder then reads.
func canonicalVtepMAC(data []byte) (mac net.HardwareAddr, ok bool) {
	rest, found := bytes.CutPrefix(data, []byte(`{"VNI":`))
	if !found {
		return nil, false
	}
	i := 0
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	rest, found = bytes.CutPrefix(rest[i:], []byte(`,"VtepMAC":"`))
	const macLen = len("00:00:00:00:00:00")
	if i == 0 || !found || len(rest) != macLen+len(`"}`) || string(rest[macLen:]) != `"}` {
		return nil, false
	}
	mac, err := net.ParseMAC(string(rest[:macLen]))
	return mac, err == nil && len(mac) == 6
}
