package subnet

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// BGP is the "BGP" object of net-conf.json: what the BGP speaker of every
// node does. A node adds peers of its own (its top-of-rack routers) with
// weftd's --bgp-* flags; the password is per node too, never in the
// configuration.
type BGP struct {
	// ASN is the nodes' AS number (default 64512).
	ASN uint32
	// Peers are the routers every node peers with.
	Peers []BGPPeer
	// Communities are attached to every route a node advertises.
	Communities []Community
	// GracefulRestartTime is how long routers keep a node's routes while
	// its weftd restarts (default 120 s; at most 4095 s).
	GracefulRestartTime time.Duration
	// AdvertisePodSubnets announces each node's pod subnets (default true).
	AdvertisePodSubnets bool
	// AdvertiseServiceVIPs announces services' VIPs (default true): a
	// service with traffic policy Cluster from every node, Local from the
	// nodes with a ready endpoint. A service may say otherwise.
	AdvertiseServiceVIPs bool
	// ServiceCommunities go on VIP routes, besides Communities.
	ServiceCommunities []Community
	// AggregateServiceNetwork announces each service network as one route
	// from every node instead of a route per Cluster VIP (Local VIPs are
	// still announced alone, from the nodes with an endpoint).
	AggregateServiceNetwork bool
}

// BGPPeer is a router to peer with.
type BGPPeer struct {
	Address netip.Addr
	ASN     uint32
	// Port is the router's BGP port (default 179).
	Port uint16
}

// Community is a standard BGP community, ASN:VALUE.
type Community uint32

func (c Community) String() string {
	return strconv.Itoa(int(c>>16)) + ":" + strconv.Itoa(int(c&0xffff))
}

// ParseCommunity parses "ASN:VALUE", each part 0 to 65535.
func ParseCommunity(s string) (Community, error) {
	a, v, ok := strings.Cut(s, ":")
	hi, err1 := strconv.ParseUint(a, 10, 16)
	lo, err2 := strconv.ParseUint(v, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%q is not a community; give it as ASN:VALUE, each 0 to 65535 (e.g. \"64512:100\")", s)
	}
	return Community(hi<<16 | lo), nil
}

// Defaults of the BGP object.
const (
	DefaultBGPASN              = 64512
	DefaultGracefulRestartTime = 120 * time.Second
	// MaxGracefulRestartTime is the largest restart time BGP can carry
	// (a 12-bit field of seconds).
	MaxGracefulRestartTime = 4095 * time.Second
)

// DefaultBGP is the BGP object's defaults: what a BGP object without keys
// means, and what a node runs with when only its --bgp-* flags ask for
// BGP.
func DefaultBGP() *BGP {
	return &BGP{ASN: DefaultBGPASN, GracefulRestartTime: DefaultGracefulRestartTime, AdvertisePodSubnets: true, AdvertiseServiceVIPs: true}
}

// Equal reports whether b and o say the same (both may be nil).
func (b *BGP) Equal(o *BGP) bool {
	if b == nil || o == nil {
		return b == o
	}
	return b.ASN == o.ASN && slices.Equal(b.Peers, o.Peers) && slices.Equal(b.Communities, o.Communities) &&
		b.GracefulRestartTime == o.GracefulRestartTime && b.AdvertisePodSubnets == o.AdvertisePodSubnets &&
		b.AdvertiseServiceVIPs == o.AdvertiseServiceVIPs && slices.Equal(b.ServiceCommunities, o.ServiceCommunities) &&
		b.AggregateServiceNetwork == o.AggregateServiceNetwork
}

var bgpKeys = canonical("ASN", "Peers", "Communities", "GracefulRestartTime", "AdvertisePodSubnets",
	"AdvertiseServiceVIPs", "ServiceCommunities", "AggregateServiceNetwork")

var bgpPeerKeys = canonical("Address", "ASN", "Port")

// CheckASN says why asn cannot be a BGP AS number, or returns nil. what
// names it in the message ("BGP.ASN", "--bgp-peer-asn").
func CheckASN(what string, asn uint64) error {
	switch {
	case asn == 0 || asn > 1<<32-1:
		return fmt.Errorf("%s %d is out of range; use 1 to 4294967295 (private: 64512 to 65534, 4200000000 to 4294967294)", what, asn)
	case asn == 23456:
		return fmt.Errorf("%s 23456 is AS_TRANS, which no AS may use; use a private ASN such as 64512", what)
	}
	return nil
}

// parseBGP parses the BGP object; raw absent or null means no BGP.
func parseBGP(raw json.RawMessage) (*BGP, []string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil, nil
	}
	obj, err := decodeObject("BGP", raw, bgpKeys)
	if err != nil {
		return nil, nil, err
	}
	obj.path = "BGP."
	var warnings []string
	for _, k := range obj.unknown {
		warnings = append(warnings, fmt.Sprintf("net-conf.json key \"BGP.%s\" is not used by weft; ignoring it", k))
	}
	b := DefaultBGP()
	if b.ASN, err = obj.asn("ASN", DefaultBGPASN); err != nil {
		return nil, nil, err
	}
	secs, err := obj.integer("GracefulRestartTime", int(DefaultGracefulRestartTime/time.Second))
	if err != nil {
		return nil, nil, err
	}
	if secs < 1 || time.Duration(secs)*time.Second > MaxGracefulRestartTime {
		return nil, nil, configErr("BGP.GracefulRestartTime", "BGP.GracefulRestartTime %d is out of range; use 1 to 4095 (seconds routers keep a node's routes while its weftd restarts)", secs)
	}
	b.GracefulRestartTime = time.Duration(secs) * time.Second
	if b.AdvertisePodSubnets, err = obj.boolean("AdvertisePodSubnets", true); err != nil {
		return nil, nil, err
	}
	if b.AdvertiseServiceVIPs, err = obj.boolean("AdvertiseServiceVIPs", true); err != nil {
		return nil, nil, err
	}
	if b.AggregateServiceNetwork, err = obj.boolean("AggregateServiceNetwork", false); err != nil {
		return nil, nil, err
	}
	if b.Communities, err = obj.communities("Communities"); err != nil {
		return nil, nil, err
	}
	if b.ServiceCommunities, err = obj.communities("ServiceCommunities"); err != nil {
		return nil, nil, err
	}
	if raw, ok := obj.fields["Peers"]; ok && string(raw) != "null" {
		var list []json.RawMessage
		if err := json.Unmarshal(raw, &list); err != nil {
			return nil, nil, configErr("BGP.Peers", "BGP.Peers %s must be a list of objects such as [{\"Address\":\"198.18.0.253\",\"ASN\":64500}]", raw)
		}
		seen := map[netip.Addr]bool{}
		for i, praw := range list {
			p, err := parseBGPPeer(fmt.Sprintf("BGP.Peers[%d].", i), praw)
			if err != nil {
				return nil, nil, err
			}
			if seen[p.Address] {
				return nil, nil, configErr("BGP.Peers", "BGP.Peers[%d].Address %s is given twice", i, p.Address)
			}
			seen[p.Address] = true
			b.Peers = append(b.Peers, p)
		}
	}
	return b, warnings, nil
}

func parseBGPPeer(path string, raw json.RawMessage) (BGPPeer, error) {
	obj, err := decodeObject(strings.TrimSuffix(path, "."), raw, bgpPeerKeys)
	if err != nil {
		return BGPPeer{}, err
	}
	obj.path = path
	if len(obj.unknown) > 0 {
		return BGPPeer{}, configErr(path+obj.unknown[0], "%s%s is not a key of a BGP peer; use Address, ASN and Port", path, obj.unknown[0])
	}
	var p BGPPeer
	if _, ok := obj.fields["Address"]; !ok {
		return BGPPeer{}, configErr(path+"Address", "%sAddress is missing; give the router's IP address", path)
	}
	s, err := obj.str("Address")
	if err != nil {
		return BGPPeer{}, err
	}
	if p.Address, err = netip.ParseAddr(s); err != nil || p.Address.Zone() != "" || p.Address.Is4In6() || !p.Address.IsGlobalUnicast() && !p.Address.IsPrivate() {
		return BGPPeer{}, configErr(path+"Address", "%sAddress %q is not a unicast IP address", path, s)
	}
	if _, ok := obj.fields["ASN"]; !ok {
		return BGPPeer{}, configErr(path+"ASN", "%sASN is missing; give the router's AS number", path)
	}
	if p.ASN, err = obj.asn("ASN", 0); err != nil {
		return BGPPeer{}, err
	}
	port, err := obj.integer("Port", 179)
	if err != nil {
		return BGPPeer{}, err
	}
	if port < 1 || port > 65535 {
		return BGPPeer{}, configErr(path+"Port", "%sPort %d is out of range; use 1 to 65535 (179 is BGP's)", path, port)
	}
	p.Port = uint16(port)
	return p, nil
}

// communities reads a list of communities ("ASN:VALUE").
func (o *object) communities(key string) ([]Community, error) {
	raw, ok := o.fields[key]
	if !ok || string(raw) == "null" {
		return nil, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, configErr(o.path+key, "%s%s %s must be a list of strings such as [\"64512:100\"]", o.path, key, raw)
	}
	var out []Community
	for i, s := range list {
		c, err := ParseCommunity(s)
		if err != nil {
			return nil, configErr(o.path+key, "%s%s[%d] %v", o.path, key, i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// asn reads an AS number, which may be larger than integer allows.
func (o *object) asn(key string, def uint32) (uint32, error) {
	raw, ok := o.fields[key]
	if !ok || string(raw) == "null" {
		return def, nil
	}
	v, err := strconv.ParseUint(string(raw), 10, 64)
	if err != nil {
		return 0, configErr(o.path+key, "%s%s %s must be a whole number", o.path, key, raw)
	}
	if err := CheckASN(o.path+key, v); err != nil {
		return 0, configErr(o.path+key, "%v", err)
	}
	return uint32(v), nil
}
