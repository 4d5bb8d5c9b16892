package proxy

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/service"
)

// benchServices are n services with eps endpoints each; version v moves
// the endpoints of service v%n.
func benchServices(n, eps, v int) []*service.Service {
	out := make([]*service.Service, n)
	for i := range n {
		s := &service.Service{Namespace: "bench", Name: fmt.Sprintf("svc-%d", i), VIPs: []netip.Addr{netip.AddrFrom4([4]byte{100, 64, byte((i + 1) >> 8), byte(i + 1)})},
			Ports: []service.Port{{Protocol: service.TCP, Port: 80, TargetPort: 8080}}, TrafficPolicy: service.Cluster}
		shift := byte(0)
		if i == v%n && v > 0 {
			shift = byte(v)
		}
		for e := range eps {
			s.Endpoints = append(s.Endpoints, service.Endpoint{Address: netip.AddrFrom4([4]byte{100, byte(97 + e), byte(i >> 8), byte(i) ^ shift})})
		}
		out[i] = s
	}
	return out
}

// BenchmarkBuild1000x10 is the rules of 1,000 services with 10 endpoints
// each, worked out from scratch (what every sync does).
func BenchmarkBuild1000x10(b *testing.B) {
	svcs := benchServices(1000, 10, 0)
	b.ReportAllocs()
	for b.Loop() {
		Build(svcs, testNode)
	}
}

func BenchmarkAdmit1000(b *testing.B) {
	svcs := benchServices(1000, 10, 0)
	b.ReportAllocs()
	for b.Loop() {
		service.Admit(svcs)
	}
}

func BenchmarkValidate1000(b *testing.B) {
	svcs := benchServices(1000, 10, 0)
	cfg := testNetwork(b, true)
	b.ReportAllocs()
	for b.Loop() {
		for _, s := range svcs {
			s.Validate(cfg)
		}
	}
}

// BenchmarkMerge1000x10 joins the parts of 1,000 services (what a sync
// does when one service changed and the others' parts are kept).
func BenchmarkMerge1000x10(b *testing.B) {
	var parts []*State
	for _, s := range benchServices(1000, 10, 0) {
		parts = append(parts, ServiceState(s, testNode))
	}
	b.ReportAllocs()
	for b.Loop() {
		Merge(parts, testNode)
	}
}

// BenchmarkColdSync1000x10 writes the table of 1,000 services with 10
// endpoints each into an empty namespace: one transaction (needs root).
func BenchmarkColdSync1000x10(b *testing.B) {
	st := Build(benchServices(1000, 10, 0), testNode)
	for b.Loop() {
		b.StopTimer()
		n := testenv.NewNetNS(b)
		table := NewTable(BufferedConn(int(n.Fd())))
		b.StartTimer()
		if _, err := table.Sync(st, testNode.Subnets); err != nil {
			b.Fatal(err)
		}
	}
}
