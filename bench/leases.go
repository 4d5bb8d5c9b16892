package main

import (
	"context"
	"fmt"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/kernel"
)

// benchConf leaves room for 16,383 nodes: /26 subnets of a /12.
const benchConf = `{"Network":"100.96.0.0/12","SubnetLen":26,"Backend":{"Type":"vxlan"}}`

const subnetsPrefix = "/weft/network/subnets/"

// peerLease is generated peer i's lease in flannel's vxlan format.
func peerLease(i int) (key, value string) {
	a := uint32(100)<<24 | uint32(96)<<16 + uint32(i+1)*64
	sn := fmt.Sprintf("%d.%d.%d.%d", a>>24, a>>16&255, a>>8&255, a&255)
	pub := fmt.Sprintf("198.19.%d.%d", i>>8&255, i&255)
	mac := fmt.Sprintf("0e:be:%02x:%02x:%02x:%02x", i>>24&255, i>>16&255, i>>8&255, i&255)
	return sn + "-26", fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q},"BackendV6Data":null,"Node":"peer-%d"}`, pub, mac, i)
}

// putLeases writes peers [from, to) in transactions of 128 writes.
func putLeases(ctx context.Context, cli *clientv3.Client, from, to int) error {
	return batch(ctx, cli, from, to, func(i int) clientv3.Op {
		k, v := peerLease(i)
		return clientv3.OpPut(subnetsPrefix+k, v)
	})
}

// deleteLeases deletes peers [from, to).
func deleteLeases(ctx context.Context, cli *clientv3.Client, from, to int) error {
	return batch(ctx, cli, from, to, func(i int) clientv3.Op {
		k, _ := peerLease(i)
		return clientv3.OpDelete(subnetsPrefix + k)
	})
}

func batch(ctx context.Context, cli *clientv3.Client, from, to int, op func(int) clientv3.Op) error {
	for i := from; i < to; i += 128 {
		var ops []clientv3.Op
		for j := i; j < min(i+128, to); j++ {
			ops = append(ops, op(j))
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := cli.Txn(cctx).Then(ops...).Commit()
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// nodeKernel reads a node's routing table from outside its namespace.
type nodeKernel struct {
	h   netlinksafe.Handle
	nsh netns.NsHandle
}

func openKernel(nsName string) (*nodeKernel, error) {
	nsh, err := netns.GetFromName(nsName)
	if err != nil {
		return nil, err
	}
	h, err := netlinksafe.NewHandleAt(nsh)
	if err != nil {
		nsh.Close()
		return nil, err
	}
	return &nodeKernel{h: h, nsh: nsh}, nil
}

func (k *nodeKernel) close() { k.h.Close(); k.nsh.Close() }

// weftRoutes counts the routes weft installed.
func (k *nodeKernel) weftRoutes() (int, error) {
	rs, err := k.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: kernel.RouteProtocol, Table: 254}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	return len(rs), err
}

// waitRoutes polls until weft's routes number want, and returns when that
// was first seen.
func (k *nodeKernel) waitRoutes(want int, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		n, err := k.weftRoutes()
		if err == nil && n == want {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%d weft routes after %v, want %d (%v)", n, timeout, want, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// routeEvents subscribes to route changes in the namespace.
func (k *nodeKernel) routeEvents() (<-chan netlink.RouteUpdate, func(), error) {
	ch := make(chan netlink.RouteUpdate, 1<<14)
	done := make(chan struct{})
	nsh := k.nsh
	err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
		Namespace: &nsh, ReceiveBufferSize: 32 << 20, ReceiveBufferForceSize: true,
	})
	return ch, func() { close(done) }, err
}
