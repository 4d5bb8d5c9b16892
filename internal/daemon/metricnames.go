package daemon

import (
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// fqNameRE finds a metric's name in prometheus.Desc.String(), which is
// `Desc{fqName: "weft_ready", help: ...}`: a Desc has no exported accessor
// for its name, and this text form is the only way to it without
// collecting values.
var fqNameRE = regexp.MustCompile(`fqName: "([^"]+)"`)

// MetricNames returns the sorted names of the weft_ metrics weftd
// exports (histograms by their own name, without _bucket, _count or
// _sum), from the very registry weftd serves, for checking dashboards and
// alert rules against it. It starts nothing and is safe for concurrent use.
func MetricNames() []string {
	// newMetrics needs a daemon only for what its collectors read at
	// scrape time; describing them reads nothing.
	m := newMetrics(&daemon{})
	ch := make(chan *prometheus.Desc)
	go func() {
		m.registry.Describe(ch)
		close(ch)
	}()
	var names []string
	for desc := range ch {
		if sm := fqNameRE.FindStringSubmatch(desc.String()); sm != nil && strings.HasPrefix(sm[1], "weft_") {
			names = append(names, sm[1])
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}
