// Package status is the JSON document weftd serves at /status and
// `weftctl status` shows.
package status

import "time"

// Status is what a running weftd reports about itself.
type Status struct {
	Node        string    `json:"node"`
	Backend     string    `json:"backend"`
	Interface   string    `json:"interface,omitempty"`
	PublicIP    string    `json:"publicIP,omitempty"`
	PublicIPv6  string    `json:"publicIPv6,omitempty"`
	Subnet      string    `json:"subnet,omitempty"`
	IPv6Subnet  string    `json:"ipv6Subnet,omitempty"`
	MTU         int       `json:"mtu,omitempty"`
	Ready       bool      `json:"ready"`
	NotReady    string    `json:"notReady,omitempty"` // why, when not ready
	LeaseTTL    int64     `json:"leaseTTLSeconds"`
	LeaseIssue  string    `json:"leaseProblem,omitempty"`
	ConfigIssue string    `json:"configProblem,omitempty"` // a configuration change that was refused
	Peers       Peers     `json:"peers"`
	LastSync    time.Time `json:"lastSync,omitzero"`
	LastSyncErr string    `json:"lastSyncError,omitempty"`
	SyncErrors  uint64    `json:"syncErrors"`
	Restarts    uint64    `json:"etcdWatchRestarts"`
	// BGP is the BGP speaker's state; absent when BGP is off.
	BGP *BGP `json:"bgp,omitempty"`
	// Services is what the node programs for services.
	Services *Services `json:"services,omitempty"`
}

// Services is what a node's service proxy has programmed.
type Services struct {
	// Enabled is false when the network has no ServiceNetwork (nor
	// ServiceIPv6Network).
	Enabled  bool     `json:"enabled"`
	Networks []string `json:"networks,omitempty"`
	// Programmed counts the services in the node's table, Endpoints their
	// ready endpoints.
	Programmed int `json:"programmed"`
	Endpoints  int `json:"endpoints"`
	// Refused are definitions that are invalid or claim what another
	// service holds, and why.
	Refused []RefusedService `json:"refused,omitempty"`
	// LastChange is when the last change reached the kernel.
	LastChange time.Time `json:"lastChange,omitzero"`
	// LastError is why the last attempt failed, when it did.
	LastError string `json:"lastError,omitempty"`
}

// RefusedService is a service definition the node does not program.
type RefusedService struct {
	Service string `json:"service"`
	Problem string `json:"problem"`
}

// BGP is what the node's BGP speaker does.
type BGP struct {
	ASN        uint32     `json:"asn"`
	RouterID   string     `json:"routerID"`
	Peers      []BGPPeer  `json:"peers"`
	Advertised []BGPRoute `json:"advertised"`
}

// BGPPeer is one session with a router. The password is never reported.
type BGPPeer struct {
	Address string `json:"address"`
	ASN     uint32 `json:"asn"`
	// State is "established", or where the session is on its way there
	// ("idle", "connect", "active", "opensent", "openconfirm").
	State string `json:"state"`
	// Since is when the session entered State (its uptime when established).
	Since            time.Time `json:"since,omitzero"`
	PrefixesSent     uint64    `json:"prefixesSent"`
	PrefixesReceived uint64    `json:"prefixesReceived"`
	// Problem says why the session is not established.
	Problem string `json:"problem,omitempty"`
}

// BGPRoute is a route the node advertises, and why.
type BGPRoute struct {
	Prefix  string `json:"prefix"`
	NextHop string `json:"nextHop"`
	Why     string `json:"why"`
}

// Peers counts the leases of other nodes by what the backend did with them.
type Peers struct {
	Known       int `json:"known"`
	Programmed  int `json:"programmed"`
	OtherType   int `json:"otherBackend"`
	Unreachable int `json:"unreachable"`
	Direct      int `json:"direct"` // programmed with a plain route (DirectRouting)
}
