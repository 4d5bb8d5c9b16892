package daemon

import (
	"slices"
	"strings"
	"testing"
)

func TestMetricNames(t *testing.T) {
	names := MetricNames()
	for _, want := range []string{
		"weft_ready", "weft_build_info", "weft_peers",
		"weft_sync_duration_seconds", "weft_sync_errors_total",
		"weft_lease_ttl_seconds", "weft_lease_problem",
		"weft_etcd_connected", "weft_etcd_request_errors_total",
		"weft_bgp_session_up", "weft_services",
	} {
		if !slices.Contains(names, want) {
			t.Errorf("MetricNames() lacks %s: %v", want, names)
		}
	}
	for _, n := range names {
		if !strings.HasPrefix(n, "weft_") {
			t.Errorf("MetricNames() has %s, not a weft_ metric", n)
		}
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if strings.HasSuffix(n, suffix) {
				t.Errorf("MetricNames() has %s: a histogram's series, not its name", n)
			}
		}
	}
	if !slices.IsSorted(names) || len(slices.Compact(slices.Clone(names))) != len(names) {
		t.Errorf("MetricNames() is not sorted and unique: %v", names)
	}
}
