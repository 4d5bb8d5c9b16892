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
	LastSync    time.Time `json:"lastSync"`
	LastSyncErr string    `json:"lastSyncError,omitempty"`
	SyncErrors  uint64    `json:"syncErrors"`
	Restarts    uint64    `json:"etcdWatchRestarts"`
}

// Peers counts the leases of other nodes by what the backend did with them.
type Peers struct {
	Known       int `json:"known"`
	Programmed  int `json:"programmed"`
	OtherType   int `json:"otherBackend"`
	Unreachable int `json:"unreachable"`
	Direct      int `json:"direct"` // programmed with a plain route (DirectRouting)
}
