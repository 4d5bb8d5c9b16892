package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/etcdwatch"
	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/subnet"
)

const testPrefix = "/weft/network"

func testConfig(t testing.TB, js string) *subnet.Config {
	t.Helper()
	cfg, _, err := subnet.ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newStore(t testing.TB, srv *testenv.EtcdServer, ttl time.Duration) (*Store, *logtest.Hook) {
	t.Helper()
	logger, hook := logtest.NewNullLogger()
	return New(srv.Client(t), Options{Prefix: testPrefix, TTL: ttl, Timeout: 2 * time.Second, Log: logrus.NewEntry(logger)}), hook
}

func nodeAttrs(n int) subnet.Attrs {
	return subnet.Attrs{
		PublicIP:    netip.AddrFrom4([4]byte{198, 18, byte(n >> 8), byte(n)}),
		BackendType: "host-gw",
		Node:        fmt.Sprintf("node-%d", n),
	}
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func getValue(t testing.TB, cli *clientv3.Client, key string) (*clientv3.GetResponse, subnet.Attrs) {
	t.Helper()
	resp, err := cli.Get(ctxFor(t, 5*time.Second), key)
	if err != nil {
		t.Fatal(err)
	}
	var a subnet.Attrs
	if len(resp.Kvs) == 1 {
		if err := json.Unmarshal(resp.Kvs[0].Value, &a); err != nil {
			t.Fatalf("lease value %s: %v", resp.Kvs[0].Value, err)
		}
	}
	return resp, a
}

func TestConfigRoundTrip(t *testing.T) {
	srv := testenv.StartEtcd(t)
	s, _ := newStore(t, srv, time.Minute)
	ctx := ctxFor(t, 30*time.Second)
	if _, _, err := s.GetConfig(ctx); err == nil || !strings.Contains(err.Error(), "no network configuration in etcd at /weft/network/config") {
		t.Fatalf("GetConfig on empty etcd = %v", err)
	}
	doc := `{"network":"100.96.0.0/12","EnableNFTables":true,"Backend":{"Type":"host-gw"}}`
	if err := s.PutConfig(ctx, testConfig(t, doc)); err != nil {
		t.Fatal(err)
	}
	resp, _ := srv.Client(t).Get(ctx, testPrefix+"/config")
	if got := string(resp.Kvs[0].Value); got != doc {
		t.Errorf("stored %s, want the document as given: %s", got, doc)
	}
	cfg, _, err := s.GetConfig(ctx)
	if err != nil || cfg.Backend.Type != "host-gw" || cfg.IPv4.Network != netip.MustParsePrefix("100.96.0.0/12") {
		t.Fatalf("GetConfig = %+v, %v", cfg, err)
	}
}

func TestAcquireKeepRelease(t *testing.T) {
	srv := testenv.StartEtcd(t)
	s, _ := newStore(t, srv, 2*time.Second)
	cli := srv.Client(t)
	cfg := testConfig(t, `{"Network":"100.96.0.0/12"}`)
	ctx := ctxFor(t, time.Minute)

	claim, err := s.Acquire(ctx, AcquireRequest{Config: cfg, Attrs: nodeAttrs(1)})
	if err != nil {
		t.Fatal(err)
	}
	key := testPrefix + "/subnets/" + claim.Lease().Key()
	if !cfg.IPv4.Contains(claim.Lease().Subnet) {
		t.Fatalf("acquired %v outside the pool", claim.Lease().Subnet)
	}
	if ttl := claim.TTL(); ttl <= 0 || ttl > 2*time.Second {
		t.Errorf("claim.TTL() = %v, want (0, 2s]", ttl)
	}
	resp, attrs := getValue(t, cli, key)
	if len(resp.Kvs) != 1 || attrs.Node != "node-1" || clientv3.LeaseID(resp.Kvs[0].Lease) != claim.EtcdLease() {
		t.Fatalf("key %s = %+v (attrs %+v)", key, resp.Kvs, attrs)
	}

	keepCtx, stopKeep := context.WithCancel(ctx)
	kept := make(chan struct{})
	go func() { claim.Keep(keepCtx); close(kept) }()
	time.Sleep(5 * time.Second) // well past the 2 s TTL
	if resp, _ := getValue(t, cli, key); len(resp.Kvs) != 1 {
		t.Fatal("lease expired although Keep was running")
	}
	if ttl, err := s.TTL(ctx, claim.EtcdLease()); err != nil || ttl <= 0 {
		t.Fatalf("TTL = %v, %v", ttl, err)
	}
	stopKeep()
	<-kept

	if err := claim.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if resp, _ := getValue(t, cli, key); len(resp.Kvs) != 0 {
		t.Fatal("key still there after Release")
	}
}

func TestAcquireReusesTheNodesSubnet(t *testing.T) {
	srv := testenv.StartEtcd(t)
	cfg := testConfig(t, `{"Network":"100.96.0.0/12"}`)
	ctx := ctxFor(t, time.Minute)

	s1, _ := newStore(t, srv, time.Minute)
	first, err := s1.Acquire(ctx, AcquireRequest{Config: cfg, Attrs: nodeAttrs(1)})
	if err != nil {
		t.Fatal(err)
	}
	// The daemon restarts (no Release) with a new VTEP MAC: same subnet,
	// new value, and the old etcd lease is cleaned up.
	s2, _ := newStore(t, srv, time.Minute)
	attrs := nodeAttrs(1)
	attrs.BackendType = "vxlan"
	attrs.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"6e:2f:9a:01:02:03"}`)
	second, err := s2.Acquire(ctx, AcquireRequest{Config: cfg, Attrs: attrs})
	if err != nil {
		t.Fatal(err)
	}
	if second.Lease().Subnet != first.Lease().Subnet {
		t.Fatalf("restart got %v, want %v", second.Lease().Subnet, first.Lease().Subnet)
	}
	_, stored := getValue(t, srv.Client(t), testPrefix+"/subnets/"+second.Lease().Key())
	if stored.BackendType != "vxlan" || stored.VtepMAC().String() != "6e:2f:9a:01:02:03" {
		t.Errorf("stored value not updated: %+v", stored)
	}
	if ttl, _ := s2.TTL(ctx, first.EtcdLease()); ttl != 0 {
		t.Errorf("old etcd lease %x still alive (%v)", int64(first.EtcdLease()), ttl)
	}

	// A flannel lease without Node is recognised by the public IP.
	flannelKey := testPrefix + "/subnets/100.96.77.0-24"
	srv.Client(t).Put(ctx, flannelKey, `{"PublicIP":"198.18.0.9","BackendType":"host-gw"}`)
	third, err := s2.Acquire(ctx, AcquireRequest{Config: cfg, Attrs: nodeAttrs(9)})
	if err != nil || third.Lease().Key() != "100.96.77.0-24" {
		t.Fatalf("node with flannel's lease got %v, %v", third.Lease().Key(), err)
	}
}

func TestAcquireUsesPreviousSubnet(t *testing.T) {
	srv := testenv.StartEtcd(t)
	s, _ := newStore(t, srv, time.Minute)
	cfg := testConfig(t, `{"Network":"100.96.0.0/12","EnableIPv6":true,"IPv6Network":"fd96::/48"}`)
	ctx := ctxFor(t, time.Minute)
	attrs := nodeAttrs(1)
	attrs.PublicIPv6 = netip.MustParseAddr("fd18::1")
	req := AcquireRequest{Config: cfg, Attrs: attrs,
		Previous: netip.MustParsePrefix("100.96.42.0/24"), PreviousIPv6: netip.MustParsePrefix("fd96:0:0:42::/64")}
	claim, err := s.Acquire(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if got := claim.Lease().Key(); got != "100.96.42.0-24&fd96:0:0:42::-64" {
		t.Fatalf("got %s, want the previous subnet", got)
	}
	// Taken by someone else: a new one.
	req.Attrs = nodeAttrs(2)
	req.Attrs.PublicIPv6 = netip.MustParseAddr("fd18::2")
	other, err := s.Acquire(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if other.Lease().Subnet == claim.Lease().Subnet || other.Lease().IPv6Subnet == claim.Lease().IPv6Subnet {
		t.Fatalf("second node got %s, overlapping %s", other.Lease().Key(), claim.Lease().Key())
	}
	// Outside the network: ignored.
	req.Attrs = nodeAttrs(3)
	req.Attrs.PublicIPv6 = netip.MustParseAddr("fd18::3")
	req.Previous = netip.MustParsePrefix("10.0.0.0/24")
	third, err := s.Acquire(ctx, req)
	if err != nil || !cfg.IPv4.Contains(third.Lease().Subnet) {
		t.Fatalf("got %v, %v", third.Lease().Key(), err)
	}
}

func TestHundredConcurrentAcquiresGetDistinctSubnets(t *testing.T) {
	srv := testenv.StartEtcd(t)
	// 127 subnets for 100 nodes: plenty of lost races.
	cfg := testConfig(t, `{"Network":"100.96.0.0/17"}`)
	ctx := ctxFor(t, 2*time.Minute)
	const n = 100
	keys := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		s, _ := newStore(t, srv, time.Minute)
		wg.Add(1)
		go func() {
			defer wg.Done()
			claim, err := s.Acquire(ctx, AcquireRequest{Config: cfg, Attrs: nodeAttrs(i + 1)})
			errs[i] = err
			if err == nil {
				keys[i] = claim.Lease().Key()
			}
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range n {
		if errs[i] != nil {
			t.Errorf("node %d: %v", i+1, errs[i])
			continue
		}
		if j, dup := seen[keys[i]]; dup {
			t.Errorf("nodes %d and %d both got %s", j+1, i+1, keys[i])
		}
		seen[keys[i]] = i
	}
	s, _ := newStore(t, srv, time.Minute)
	listing, err := s.List(ctx)
	if err != nil || len(listing.Entries) != n {
		t.Fatalf("etcd holds %d leases (%v), want %d", len(listing.Entries), err, n)
	}
}

func TestAcquireExhaustedPool(t *testing.T) {
	srv := testenv.StartEtcd(t)
	s, _ := newStore(t, srv, time.Minute)
	cfg := testConfig(t, `{"Network":"100.96.0.0/22"}`)
	ctx := ctxFor(t, time.Minute)
	for i := 1; i <= 3; i++ {
		if _, err := s.Acquire(ctx, AcquireRequest{Config: cfg, Attrs: nodeAttrs(i)}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.Acquire(ctx, AcquireRequest{Config: cfg, Attrs: nodeAttrs(4)})
	want := "acquiring a subnet: all 3 subnets of 100.96.0.0/22 between 100.96.1.0/24 and 100.96.3.0/24 are taken: subnet pool exhausted"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	if ctx.Err() != nil {
		t.Fatal("Acquire retried until the deadline instead of failing")
	}
	if listing, _ := s.List(ctx); len(listing.Entries) != 3 {
		t.Errorf("failed acquire left %d leases", len(listing.Entries))
	}
}

func TestKeepRecreatesLostLease(t *testing.T) {
	srv := testenv.StartEtcd(t)
	s, hook := newStore(t, srv, 3*time.Second)
	cli := srv.Client(t)
	cfg := testConfig(t, `{"Network":"100.96.0.0/12"}`)
	ctx, cancel := context.WithCancel(ctxFor(t, time.Minute))
	defer cancel()
	claim, err := s.Acquire(ctx, AcquireRequest{Config: cfg, Attrs: nodeAttrs(1)})
	if err != nil {
		t.Fatal(err)
	}
	go claim.Keep(ctx)
	key := testPrefix + "/subnets/" + claim.Lease().Key()
	old := claim.EtcdLease()

	// The etcd lease goes away (as when it expires during an outage).
	if _, err := cli.Revoke(ctx, old); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "the lease to be re-created", func() (bool, string) {
		resp, _ := getValue(t, cli, key)
		return len(resp.Kvs) == 1 && clientv3.LeaseID(resp.Kvs[0].Lease) != old, fmt.Sprint(resp.Kvs)
	})
	if claim.Problem() != nil {
		t.Errorf("Problem = %v", claim.Problem())
	}

	// Deleted by hand: re-created too.
	if _, err := cli.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "the deleted key to be re-created", func() (bool, string) {
		resp, _ := getValue(t, cli, key)
		return len(resp.Kvs) == 1, fmt.Sprint(resp.Kvs)
	})

	// Another node takes the subnet: reported, never switched.
	if _, err := cli.Put(ctx, key, `{"PublicIP":"198.18.0.99","BackendType":"host-gw","Node":"intruder"}`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 15*time.Second, "the conflict to be reported", func() (bool, string) { return claim.Problem() != nil, "" })
	if got := claim.Problem().Error(); !strings.Contains(got, "is now leased by another node (intruder 198.18.0.99)") {
		t.Errorf("Problem = %s", got)
	}
	if claim.Lease().Key() != strings.TrimPrefix(key, testPrefix+"/subnets/") {
		t.Errorf("claim switched to %s", claim.Lease().Key())
	}
	found := false
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.ErrorLevel && e.Message == "subnet conflict" {
			found = true
		}
	}
	if !found {
		t.Error("conflict not logged as an error")
	}
}

func TestListReadsLargeClustersInPagesAtOneRevision(t *testing.T) {
	srv := testenv.StartEtcd(t)
	s, _ := newStore(t, srv, time.Minute)
	cli := srv.Client(t)
	ctx := ctxFor(t, 60*time.Second)
	const n = 2*etcdwatch.PageSize + 500
	put := func(from, to int) {
		for i := from; i < to; i += 128 { // etcd's limit of operations per transaction
			var ops []clientv3.Op
			for j := i; j < min(i+128, to); j++ {
				l := subnet.Lease{Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 96 + byte(j>>8), byte(j), 0}), 24), Attrs: nodeAttrs(j)}
				value, _ := json.Marshal(l.Attrs)
				ops = append(ops, clientv3.OpPut(s.SubnetsPrefix()+l.Key(), string(value)))
			}
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(0, n)
	listing, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range listing.Entries {
		if e.Err != nil || seen[e.Key] {
			t.Fatalf("entry %s: err %v, seen before %v", e.Key, e.Err, seen[e.Key])
		}
		seen[e.Key] = true
	}
	if len(seen) != n {
		t.Fatalf("listed %d leases, want %d", len(seen), n)
	}

	// The listing carries etcd's revision, from which a watch goes on.
	put(n, n+1)
	resp, _ := cli.Get(ctx, s.SubnetsPrefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if listing, err = s.List(ctx); err != nil || len(listing.Entries) != n+1 || listing.Revision != resp.Header.Revision {
		t.Fatalf("second listing: %d entries at revision %d (etcd at %d), %v", len(listing.Entries), listing.Revision, resp.Header.Revision, err)
	}
}

// A node with the name of another live node (another address, a live
// etcd lease) never takes its lease; it waits, saying why, and gets it
// once the other's lease is gone.
func TestAcquireDoesNotTakeALiveLeaseOfAnotherAddress(t *testing.T) {
	srv := testenv.StartEtcd(t)
	cfg := testConfig(t, `{"Network":"100.96.0.0/12"}`)
	ctx := ctxFor(t, time.Minute)
	s1, _ := newStore(t, srv, time.Minute)
	first, err := s1.Acquire(ctx, AcquireRequest{Config: cfg, Attrs: nodeAttrs(1)})
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := newStore(t, srv, time.Minute)
	clone := nodeAttrs(2)
	clone.Node = nodeAttrs(1).Node
	waiting := make(chan error, 100)
	done := make(chan *Claim, 1)
	go func() {
		c, err := s2.Acquire(ctx, AcquireRequest{Config: cfg, Attrs: clone, Waiting: func(err error) { waiting <- err }})
		if err != nil {
			t.Error(err)
		}
		done <- c
	}()
	select {
	case err := <-waiting:
		var inUse *NameInUseError
		if !errors.As(err, &inUse) || inUse.Other != nodeAttrs(1).PublicIP || !strings.Contains(err.Error(), "two nodes have the same --node-name") {
			t.Errorf("waiting because %v", err)
		}
	case c := <-done:
		t.Fatalf("the clone took a lease at once: %+v", c.Lease())
	case <-time.After(10 * time.Second):
		t.Fatal("the clone neither waits nor says why")
	}
	_, stored := getValue(t, srv.Client(t), testPrefix+"/subnets/"+first.Lease().Key())
	if stored.PublicIP != nodeAttrs(1).PublicIP {
		t.Errorf("the first node's lease was overwritten: %+v", stored)
	}
	// The first node goes for good: the clone may have the name.
	if err := first.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-done:
		if c == nil {
			t.Fatal("no lease")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the clone did not acquire after the other lease went")
	}
}
