// Package subnet holds weft's network configuration (net-conf.json), the
// lease format shared with flannel, and subnet allocation. Everything here is
// pure: no etcd, no kernel.
package subnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// Backend type names, as they appear in net-conf.json and in leases.
const (
	BackendVXLAN  = "vxlan"
	BackendHostGW = "host-gw"
	BackendIPIP   = "ipip"
)

// BackendTypes lists the backends weft can run, in the order error messages
// name them.
var BackendTypes = []string{BackendVXLAN, BackendHostGW, BackendIPIP}

// Config is a validated network configuration. Build it with ParseConfig.
type Config struct {
	// IPv4 and IPv6 are the per-family subnet pools; a disabled family has
	// the zero Pool.
	IPv4, IPv6 Pool
	Backend    Backend
	// BGP is what every node's BGP speaker does; nil when the cluster
	// configures none (nodes may still peer by their own flags).
	BGP *BGP
	// Services says where services' virtual IPs and node ports come from.
	Services Services
	// Raw is the document the configuration was parsed from, kept so that
	// writing it back preserves keys weft does not know (flannel's).
	Raw []byte
}

// Backend is the "Backend" object of net-conf.json. Options that do not
// apply to Type are kept as given and ignored by the backend.
type Backend struct {
	Type string
	// VNI is the VXLAN network identifier (vxlan; default 1).
	VNI int
	// Port is the VXLAN UDP port; 0 means the kernel default, 8472 (vxlan).
	Port int
	// GBP enables VXLAN group-based policy extensions (vxlan).
	GBP bool
	// Learning lets the VXLAN device learn remote MACs (vxlan).
	Learning bool
	// DirectRouting uses plain routes to peers on the same L2 segment
	// (vxlan, ipip).
	DirectRouting bool
	// MTU of the tunnel device; 0 derives it from the underlay.
	MTU int
}

// Pool is one address family's pod network and the range of node subnets
// leased from it.
type Pool struct {
	Network   netip.Prefix
	SubnetLen int
	// Min and Max are the network addresses of the lowest and highest
	// subnet that may be leased.
	Min, Max netip.Addr
}

// Enabled reports whether the family is configured.
func (p Pool) Enabled() bool { return p.Network.IsValid() }

// IPv6 reports whether the pool is of IPv6 addresses.
func (p Pool) IPv6() bool { return p.Network.Addr().Is6() }

// Pools returns the enabled pools, IPv4 first.
func (c *Config) Pools() []Pool {
	var pools []Pool
	for _, p := range []Pool{c.IPv4, c.IPv6} {
		if p.Enabled() {
			pools = append(pools, p)
		}
	}
	return pools
}

// ConfigError is a configuration rejected by ParseConfig. Its message names
// the key, the value and what is allowed.
type ConfigError struct {
	Key string
	Msg string
}

func (e *ConfigError) Error() string { return e.Msg }

func configErr(key, format string, args ...any) error {
	return &ConfigError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

// family describes how one address family's keys are named and sized.
type family struct {
	prefix       string // key prefix: "" or "IPv6"
	bits         int
	defaultLen   int
	example      string
	networkKey   string
	enableKey    string
	enableByDflt bool
}

var (
	ipv4Family = family{prefix: "", bits: 32, defaultLen: 24, example: "100.96.0.0/12", networkKey: "Network", enableKey: "EnableIPv4", enableByDflt: true}
	ipv6Family = family{prefix: "IPv6", bits: 128, defaultLen: 64, example: "fd96::/48", networkKey: "IPv6Network", enableKey: "EnableIPv6"}
)

// knownKeys maps the lower-case form of every top-level key weft reads to its
// canonical spelling.
var knownKeys = canonical("Network", "SubnetLen", "SubnetMin", "SubnetMax",
	"EnableIPv4", "EnableIPv6", "IPv6Network", "IPv6SubnetLen",
	"IPv6SubnetMin", "IPv6SubnetMax", "Backend", "BGP",
	"ServiceNetwork", "ServiceIPv6Network", "NodePortRange")

var backendKeys = canonical("Type", "VNI", "Port", "GBP", "DirectRouting", "MTU", "Learning")

// backendOptions lists the options each backend reads besides Type.
var backendOptions = map[string][]string{
	BackendVXLAN:  {"VNI", "Port", "GBP", "DirectRouting", "MTU", "Learning"},
	BackendHostGW: {},
	BackendIPIP:   {"DirectRouting", "MTU"},
}

func canonical(keys ...string) map[string]string {
	m := make(map[string]string, len(keys))
	for _, k := range keys {
		m[strings.ToLower(k)] = k
	}
	return m
}

// ParseConfig parses and validates a net-conf.json document with flannel's
// keys, matched case-insensitively, and fills in flannel's defaults. It
// returns warnings for keys it does not use (flannel may know them) and a
// *ConfigError for anything it cannot accept.
func ParseConfig(data []byte) (*Config, []string, error) {
	obj, err := decodeObject("net-conf.json", data, knownKeys)
	if err != nil {
		return nil, nil, err
	}
	cfg := &Config{Raw: bytes.Clone(data)}
	var warnings []string
	for _, k := range obj.unknown {
		warnings = append(warnings, fmt.Sprintf("net-conf.json key %q is not used by weft; ignoring it", k))
	}

	for _, f := range []family{ipv4Family, ipv6Family} {
		enabled, err := obj.boolean(f.enableKey, f.enableByDflt)
		if err != nil {
			return nil, nil, err
		}
		if !enabled {
			if _, given := obj.fields[f.networkKey]; given {
				warnings = append(warnings, fmt.Sprintf("%s is given but %s is false; ignoring it", f.networkKey, f.enableKey))
			}
			continue
		}
		pool, err := parsePool(obj, f)
		if err != nil {
			return nil, nil, err
		}
		if f.bits == 32 {
			cfg.IPv4 = pool
		} else {
			cfg.IPv6 = pool
		}
	}
	if !cfg.IPv4.Enabled() && !cfg.IPv6.Enabled() {
		return nil, nil, configErr("EnableIPv4", "EnableIPv4 and EnableIPv6 are both false; enable at least one address family")
	}

	backend, bw, err := parseBackend(obj.fields["Backend"])
	if err != nil {
		return nil, nil, err
	}
	cfg.Backend = backend
	warnings = append(warnings, bw...)
	if cfg.IPv6.Enabled() && backend.MTU != 0 && backend.MTU < 1280 {
		return nil, nil, configErr("Backend.MTU", "Backend.MTU %d is too small for IPv6; use at least 1280 or 0 for automatic", backend.MTU)
	}
	bgp, bgpw, err := parseBGP(obj.fields["BGP"])
	if err != nil {
		return nil, nil, err
	}
	cfg.BGP = bgp
	warnings = append(warnings, bgpw...)
	if cfg.Services, err = parseServices(obj, cfg); err != nil {
		return nil, nil, err
	}
	return cfg, warnings, nil
}

func parsePool(obj *object, f family) (Pool, error) {
	key := f.networkKey
	if _, ok := obj.fields[key]; !ok {
		return Pool{}, configErr(key, "%s is missing; give the pod network as a CIDR, e.g. %q (or set %s to false)", key, f.example, f.enableKey)
	}
	s, err := obj.str(key)
	if err != nil {
		return Pool{}, err
	}
	network, err := netip.ParsePrefix(s)
	if err != nil {
		return Pool{}, configErr(key, "%s %q is not a valid CIDR; give it as address/length, e.g. %q", key, s, f.example)
	}
	if network.Addr().Zone() != "" || network.Addr().Is4In6() {
		return Pool{}, configErr(key, "%s %q is not a plain network address; give it as address/length, e.g. %q", key, s, f.example)
	}
	if (f.bits == 32) != network.Addr().Is4() {
		if f.bits == 32 {
			return Pool{}, configErr(key, "%s %q is not an IPv4 network; put IPv6 networks in IPv6Network", key, s)
		}
		return Pool{}, configErr(key, "%s %q is not an IPv6 network; put IPv4 networks in Network", key, s)
	}
	if network.Masked() != network {
		return Pool{}, configErr(key, "%s %q has host bits set; did you mean %q?", key, s, network.Masked().String())
	}
	ones := network.Bits()

	lenKey := f.prefix + "SubnetLen"
	maxLen := f.bits - 2
	subnetLen, err := obj.integer(lenKey, 0)
	if err != nil {
		return Pool{}, err
	}
	if _, given := obj.fields[lenKey]; given {
		switch {
		case subnetLen <= ones:
			return Pool{}, configErr(lenKey, "%s %d must be longer than the %s prefix /%d", lenKey, subnetLen, key, ones)
		case subnetLen > maxLen:
			return Pool{}, configErr(lenKey, "%s %d is too long; each node needs at least 4 addresses, so use at most %d", lenKey, subnetLen, maxLen)
		case subnetLen < ones+2:
			return Pool{}, configErr(lenKey, "%s %d leaves fewer than four subnets in %s /%d; use %d to %d", lenKey, subnetLen, key, ones, ones+2, maxLen)
		}
	} else {
		switch {
		case ones > f.bits-4:
			return Pool{}, configErr(key, "%s %q is too small: it must hold four subnets of at least 4 addresses, so use a prefix of /%d or shorter", key, s, f.bits-4)
		case ones <= f.defaultLen-2:
			subnetLen = f.defaultLen
		default:
			subnetLen = ones + 2
		}
	}

	pool := Pool{Network: network, SubnetLen: subnetLen}
	first := network.Addr()
	last := LastAddr(network)
	size := u128{lo: 1}.shl(uint(f.bits - subnetLen))
	pool.Min = fromU128(toU128(first).add(size), f.bits)
	pool.Max = fromU128(toU128(last).sub(size).add(u128{lo: 1}), f.bits)

	for _, bound := range []struct {
		key string
		dst *netip.Addr
	}{{f.prefix + "SubnetMin", &pool.Min}, {f.prefix + "SubnetMax", &pool.Max}} {
		if _, given := obj.fields[bound.key]; !given {
			continue
		}
		v, err := obj.str(bound.key)
		if err != nil {
			return Pool{}, err
		}
		a, err := netip.ParseAddr(v)
		if err != nil || a.Zone() != "" || a.Is4In6() || a.Is4() != (f.bits == 32) {
			return Pool{}, configErr(bound.key, "%s %q is not a valid IPv%d address", bound.key, v, map[int]int{32: 4, 128: 6}[f.bits])
		}
		if !network.Contains(a) {
			return Pool{}, configErr(bound.key, "%s %q is outside %s %s", bound.key, v, key, network)
		}
		if p := netip.PrefixFrom(a, subnetLen).Masked(); p.Addr() != a {
			return Pool{}, configErr(bound.key, "%s %q is not on a /%d boundary; did you mean %q?", bound.key, v, subnetLen, p.Addr().String())
		}
		*bound.dst = a
	}
	if pool.Max.Less(pool.Min) {
		return Pool{}, configErr(f.prefix+"SubnetMin", "%sSubnetMin %s is above %sSubnetMax %s; the range of node subnets is empty", f.prefix, pool.Min, f.prefix, pool.Max)
	}
	return pool, nil
}

func parseBackend(raw json.RawMessage) (Backend, []string, error) {
	b := Backend{Type: BackendVXLAN, VNI: 1}
	if len(raw) == 0 || string(raw) == "null" {
		return b, nil, nil
	}
	obj, err := decodeObject("Backend", raw, backendKeys)
	if err != nil {
		return Backend{}, nil, err
	}
	obj.path = "Backend."
	var warnings []string
	for _, k := range obj.unknown {
		warnings = append(warnings, fmt.Sprintf("net-conf.json key \"Backend.%s\" is not used by weft; ignoring it", k))
	}
	if _, given := obj.fields["Type"]; given {
		t, err := obj.str("Type")
		if err != nil {
			return Backend{}, nil, err
		}
		b.Type = strings.ToLower(t)
		if _, ok := backendOptions[b.Type]; !ok {
			return Backend{}, nil, configErr("Backend.Type", "Backend.Type %q is unknown; use one of %s", t, strings.Join(BackendTypes, ", "))
		}
	}
	allowed := map[string]bool{"Type": true}
	for _, o := range backendOptions[b.Type] {
		allowed[o] = true
	}
	for k := range obj.fields {
		if !allowed[k] {
			warnings = append(warnings, fmt.Sprintf("Backend.%s does not apply to the %s backend; ignoring it", k, b.Type))
		}
	}

	ints := []struct {
		key      string
		dst      *int
		min, max int
		what     string
	}{
		{"VNI", &b.VNI, 0, 1<<24 - 1, "a VXLAN network identifier"},
		{"Port", &b.Port, 0, 65535, "a UDP port; 0 means the kernel default 8472"},
		{"MTU", &b.MTU, 68, 65535, "an MTU; 0 means derive it from the underlay"},
	}
	for _, f := range ints {
		v, err := obj.integer(f.key, *f.dst)
		if err != nil {
			return Backend{}, nil, err
		}
		if f.key == "MTU" && v == 0 {
			continue
		}
		if v < f.min || v > f.max {
			return Backend{}, nil, configErr("Backend."+f.key, "Backend.%s %d is out of range; use %d to %d (%s)", f.key, v, f.min, f.max, f.what)
		}
		*f.dst = v
	}
	bools := []struct {
		key string
		dst *bool
	}{{"GBP", &b.GBP}, {"Learning", &b.Learning}, {"DirectRouting", &b.DirectRouting}}
	for _, f := range bools {
		v, err := obj.boolean(f.key, false)
		if err != nil {
			return Backend{}, nil, err
		}
		*f.dst = v
	}
	return b, warnings, nil
}

// object is a decoded JSON object whose keys have been matched
// case-insensitively to their canonical spelling.
type object struct {
	path    string // "" or "Backend."
	fields  map[string]json.RawMessage
	unknown []string
}

func decodeObject(what string, data []byte, known map[string]string) (*object, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		var syn *json.SyntaxError
		switch {
		case len(bytes.TrimSpace(data)) == 0:
			return nil, configErr(what, "%s is empty; it must be a JSON object", what)
		case errors.As(err, &syn):
			return nil, configErr(what, "%s is not valid JSON: %v (at byte %d)", what, err, syn.Offset)
		default:
			return nil, configErr(what, "%s must be a JSON object: %v", what, err)
		}
	}
	if m == nil {
		return nil, configErr(what, "%s must be a JSON object, not null", what)
	}
	obj := &object{fields: make(map[string]json.RawMessage, len(m))}
	seen := make(map[string]string, len(m))
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name, ok := known[strings.ToLower(k)]
		if !ok {
			obj.unknown = append(obj.unknown, k)
			continue
		}
		if prev, dup := seen[name]; dup {
			return nil, configErr(name, "%s is given twice, as %q and %q; keys are matched without regard to case", name, prev, k)
		}
		seen[name] = k
		obj.fields[name] = m[k]
	}
	return obj, nil
}

func (o *object) str(key string) (string, error) {
	var s string
	if err := json.Unmarshal(o.fields[key], &s); err != nil {
		return "", configErr(o.path+key, "%s%s %s must be a string", o.path, key, o.fields[key])
	}
	return s, nil
}

func (o *object) integer(key string, def int) (int, error) {
	raw, ok := o.fields[key]
	if !ok || string(raw) == "null" {
		return def, nil
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil || f != float64(int(f)) || f > 1<<31 || f < -(1<<31) {
		return 0, configErr(o.path+key, "%s%s %s must be a whole number", o.path, key, raw)
	}
	return int(f), nil
}

func (o *object) boolean(key string, def bool) (bool, error) {
	raw, ok := o.fields[key]
	if !ok || string(raw) == "null" {
		return def, nil
	}
	var v bool
	if err := json.Unmarshal(raw, &v); err != nil {
		return false, configErr(o.path+key, "%s%s %s must be true or false", o.path, key, raw)
	}
	return v, nil
}
