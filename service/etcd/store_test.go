package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/weft-net/weft/internal/etcdwatch"
	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/service"
	"github.com/weft-net/weft/subnet"
)

const testPrefix = "/weft/network"

func network(t testing.TB, extra string) *subnet.Config {
	t.Helper()
	cfg, _, err := subnet.ParseConfig([]byte(`{"Network":"100.96.0.0/12","EnableIPv6":true,"IPv6Network":"fd96::/48","ServiceNetwork":"100.64.0.0/16","ServiceIPv6Network":"fd64::/108"` + extra + `}`))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newStore(t testing.TB) (*Store, *testenv.EtcdServer, *logtest.Hook) {
	t.Helper()
	srv := testenv.StartEtcd(t)
	logger, hook := logtest.NewNullLogger()
	return New(srv.Client(t), testPrefix, logrus.NewEntry(logger)), srv, hook
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func web(ns, name string, nodePort uint16, vips ...string) *service.Service {
	s := &service.Service{Namespace: ns, Name: name, TrafficPolicy: service.Cluster,
		Ports: []service.Port{{Protocol: service.TCP, Port: 80, TargetPort: 8080, NodePort: nodePort}}}
	for _, v := range vips {
		s.VIPs = append(s.VIPs, netip.MustParseAddr(v))
	}
	return s
}

func TestPutAllocatesDistinctVIPsUnderConcurrency(t *testing.T) {
	st, _, _ := newStore(t)
	// A /28 has 14 usable addresses: 14 services at once get all of them,
	// each once; the 15th is told the network is full.
	cfg, _, err := subnet.ParseConfig([]byte(`{"Network":"100.96.0.0/12","ServiceNetwork":"100.64.0.0/28"}`))
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t)
	var wg sync.WaitGroup
	vips := make([]netip.Addr, 14)
	errs := make([]error, 14)
	for i := range 14 {
		wg.Go(func() {
			out, err := st.Put(ctx, web("default", fmt.Sprintf("s%d", i), 0), cfg, true, 0, true)
			errs[i] = err
			if err == nil {
				vips[i] = out.VIPs[0]
			}
		})
	}
	wg.Wait()
	seen := map[netip.Addr]string{}
	for i, v := range vips {
		if errs[i] != nil {
			t.Fatalf("s%d: %v", i, errs[i])
		}
		if o, dup := seen[v]; dup {
			t.Errorf("%s given to s%d and %s", v, i, o)
		}
		seen[v] = fmt.Sprintf("s%d", i)
		if !cfg.Services.IPv4.Contains(v) || v == cfg.Services.IPv4.Addr() || v == netip.MustParseAddr("100.64.0.15") {
			t.Errorf("s%d got %s", i, v)
		}
	}
	if _, err := st.Put(ctx, web("default", "s14", 0), cfg, true, 0, true); err == nil || !strings.Contains(err.Error(), "every VIP of the service network 100.64.0.0/28 is taken") {
		t.Errorf("15th service: %v", err)
	}
	// Removing one frees its VIP for the next.
	if err := st.Delete(ctx, "default", "s3"); err != nil {
		t.Fatal(err)
	}
	out, err := st.Put(ctx, web("default", "s14", 0), cfg, true, 0, true)
	if err != nil || out.VIPs[0] != vips[3] {
		t.Errorf("after removing s3 (%s): %v, %v", vips[3], out, err)
	}
}

func TestPutRefusesWhatAnotherServiceHolds(t *testing.T) {
	st, _, _ := newStore(t)
	cfg := network(t, "")
	ctx := ctxFor(t)
	if _, err := st.Put(ctx, web("default", "a", 30080, "100.64.0.10"), cfg, true, 0); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		svc   *service.Service
		field string
		want  string
	}{
		{web("default", "b", 0, "100.64.0.10"), "vips[0]", "service default/b: vips[0] 100.64.0.10 is already used by default/a"},
		{web("default", "c", 30080, "100.64.0.11"), "ports[0].nodePort", "service default/c: ports[0].nodePort 30080/TCP is already used by default/a"},
	} {
		_, err := st.Put(ctx, tc.svc, cfg, true, 0)
		var ce *ConflictError
		if !errors.As(err, &ce) || ce.Field != tc.field || err.Error() != tc.want {
			t.Errorf("%s: %v; want %q", tc.svc.Key(), err, tc.want)
		}
		if _, _, err := st.Get(ctx, tc.svc.Namespace, tc.svc.Name); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s was written anyway: %v", tc.svc.Key(), err)
		}
	}
	// The same name again without --replace.
	if _, err := st.Put(ctx, web("default", "a", 0, "100.64.0.12"), cfg, true, 0); err == nil || !strings.Contains(err.Error(), "service default/a exists") {
		t.Errorf("creating default/a twice: %v", err)
	}
	// Replacing a with another VIP and no node port releases both.
	if _, err := st.Put(ctx, web("default", "a", 0, "100.64.0.12"), cfg, false, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, web("default", "c", 30080, "100.64.0.10"), cfg, true, 0); err != nil {
		t.Errorf("what default/a gave up is still held: %v", err)
	}
}

func TestSetEndpointsAndDelete(t *testing.T) {
	st, _, _ := newStore(t)
	cfg := network(t, "")
	ctx := ctxFor(t)
	if _, err := st.Put(ctx, web("default", "a", 0, "100.64.0.10"), cfg, true, 0); err != nil {
		t.Fatal(err)
	}
	f := false
	eps := []service.Endpoint{{Address: netip.MustParseAddr("100.96.1.5")}, {Address: netip.MustParseAddr("100.96.2.5"), Ready: &f}}
	if _, err := st.SetEndpoints(ctx, cfg, "default", "a", eps); err != nil {
		t.Fatal(err)
	}
	got, _, err := st.Get(ctx, "default", "a")
	if err != nil || len(got.Endpoints) != 2 || got.Endpoints[1].IsReady() {
		t.Errorf("endpoints = %+v, %v", got, err)
	}
	bad := []service.Endpoint{{Address: netip.MustParseAddr("fd96::5")}}
	var ve *service.ValidationError
	if _, err := st.SetEndpoints(ctx, cfg, "default", "a", bad); !errors.As(err, &ve) || ve.Field != "endpoints[0].address" {
		t.Errorf("an IPv6 endpoint of an IPv4 service: %v", err)
	}
	if err := st.Delete(ctx, "default", "a"); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, "default", "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting twice: %v", err)
	}
	if _, err := st.SetEndpoints(ctx, cfg, "default", "a", eps); !errors.Is(err, ErrNotFound) {
		t.Errorf("endpoints of a deleted service: %v", err)
	}
}

// The watch delivers services with their creation revision, and a
// definition that does not parse with the reason.
func TestWatchDeliversWhatDoesNotParseWithItsError(t *testing.T) {
	st, srv, _ := newStore(t)
	cfg := network(t, "")
	ctx, cancel := context.WithCancel(ctxFor(t))
	defer cancel()
	cli := srv.Client(t)
	if _, err := st.Put(ctx, web("default", "a", 0, "100.64.0.10"), cfg, true, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, st.ServicesPrefix()+"default/broken", `{"vips":["100.64.0.11"],"ports":[{"port":"eighty"}]}`); err != nil {
		t.Fatal(err)
	}
	batches := make(chan []etcdwatch.Event[service.Definition], 10)
	go st.Watch(ctx, func(ctx context.Context, b []etcdwatch.Event[service.Definition]) error {
		batches <- b
		return nil
	})
	first := <-batches
	if len(first) != 2 || first[0].Key != "default/a" || first[0].Created == 0 || first[0].Item.Service.VIPs[0] != netip.MustParseAddr("100.64.0.10") {
		t.Fatalf("first batch %+v; want default/a and default/broken", first)
	}
	if first[1].Key != "default/broken" || first[1].Item.Err == nil || !strings.Contains(first[1].Item.Err.Error(), "ports.port") {
		t.Errorf("default/broken: %+v", first[1])
	}
	if err := st.Delete(ctx, "default", "a"); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-batches:
		if len(b) != 1 || !b[0].Removed || b[0].Key != "default/a" {
			t.Errorf("after the delete: %+v", b)
		}
	case <-time.After(5 * time.Second):
		t.Error("the delete was not seen")
	}
}
