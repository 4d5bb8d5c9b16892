package dist

import (
	"bytes"
	"encoding/json"
	"flag"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/weft-net/weft/internal/daemon"
	"github.com/weft-net/weft/internal/testenv"
)

var updateAlerts = flag.Bool("update-alerts", false, "rewrite "+alertCRD+" from "+alertRules)

const (
	alertRules = "prometheus/weft-alerts.yaml"
	alertTests = "prometheus/weft-alerts_test.yaml"
	alertCRD   = "kubernetes/weft-alerts-rule.yaml"
	dashboard  = "grafana/weft-dashboard.json"
)

// issueAlerts are the alerts issue #16 asks for by name.
var issueAlerts = []string{
	"WeftNodeNotReady", "WeftSyncErrors", "WeftLeaseTTLLow", "WeftSubnetConflict",
	"WeftEtcdUnreachable", "WeftBGPSessionDown",
}

// keyMetrics are the metrics an operator must find on the dashboard.
var keyMetrics = []string{
	"weft_ready", "weft_peers", "weft_sync_duration_seconds", "weft_sync_errors_total",
	"weft_lease_ttl_seconds", "weft_lease_problem", "weft_etcd_connected",
	"weft_etcd_request_duration_seconds", "weft_etcd_request_errors_total",
	"weft_bgp_session_up", "weft_services", "weft_service_sync_duration_seconds",
	"weft_build_info",
}

// ruleFile is a Prometheus rule file (what promtool check rules reads).
type ruleFile struct {
	Groups []struct {
		Name  string
		Rules []struct {
			Alert, Record, Expr, For string
			Labels, Annotations      map[string]string
		}
	}
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	var rf ruleFile
	if err := yaml.Unmarshal(must(os.ReadFile(alertRules)), &rf); err != nil {
		t.Fatalf("%s: %v", alertRules, err)
	}
	return rf
}

// promtool returns the path of promtool, or skips t (fails it under CI).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		testenv.Unavailable(t, "no promtool (Debian package prometheus): %v", err)
	}
	return p
}

// TestAlertRulesPassPromtool checks the rule file with Prometheus's own
// checker and runs its unit tests, which make every alert fire from the
// series that should fire it, and none from a healthy node.
func TestAlertRulesPassPromtool(t *testing.T) {
	p := promtool(t)
	for _, args := range [][]string{{"check", "rules", alertRules}, {"test", "rules", alertTests}} {
		if out, err := exec.Command(p, args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestAlertRulesCoverTheIssue checks that every alert the issue asks for
// exists, and that every alert says how bad it is and what to do.
func TestAlertRulesCoverTheIssue(t *testing.T) {
	alerts := map[string]bool{}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			if alerts[r.Alert] {
				t.Errorf("alert %s is defined twice", r.Alert)
			}
			alerts[r.Alert] = true
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("alert %s has severity %q, want critical or warning", r.Alert, s)
			}
			if r.Annotations["summary"] == "" {
				t.Errorf("alert %s has no summary", r.Alert)
			}
			d := r.Annotations["description"]
			if !strings.Contains(d, "weftctl status") || !strings.Contains(d, "Troubleshooting") {
				t.Errorf("alert %s's description points neither at `weftctl status` nor at the README's Troubleshooting table: %q", r.Alert, d)
			}
		}
	}
	for _, a := range issueAlerts {
		if !alerts[a] {
			t.Errorf("%s has no alert %s", alertRules, a)
		}
	}
}

// TestAlertRulesUseExportedMetrics checks that the rules ask only for
// metrics weftd exports.
func TestAlertRulesUseExportedMetrics(t *testing.T) {
	var exprs []string
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	checkExported(t, alertRules, exprs)
}

// TestAlertRulesPrometheusRuleCRD checks that the PrometheusRule for
// prometheus-operator holds the very groups of the rule file, indented
// under spec; -update-alerts rewrites it so, keeping its header.
func TestAlertRulesPrometheusRuleCRD(t *testing.T) {
	crd := must(os.ReadFile(alertCRD))
	rules := must(os.ReadFile(alertRules))
	head, _, ok := bytes.Cut(crd, []byte("\nspec:\n"))
	if !ok {
		t.Fatalf("%s has no spec", alertCRD)
	}
	_, groups, ok := bytes.Cut(rules, []byte("\ngroups:"))
	if !ok {
		t.Fatalf("%s has no groups", alertRules)
	}
	want := bytes.NewBuffer(append(head, "\nspec:\n"...))
	for line := range strings.Lines("groups:" + string(groups)) {
		if strings.TrimSpace(line) != "" {
			want.WriteString("  ")
		}
		want.WriteString(line)
	}
	if *updateAlerts {
		if err := os.WriteFile(alertCRD, want.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		crd = want.Bytes()
	}
	if !bytes.Equal(crd, want.Bytes()) {
		t.Errorf("%s does not hold the groups of %s; rewrite it with go test ./dist -run %s -update-alerts", alertCRD, alertRules, t.Name())
	}
	var obj struct {
		APIVersion string
		Kind       string
		Spec       ruleFile
	}
	if err := yaml.Unmarshal(crd, &obj); err != nil {
		t.Fatalf("%s: %v", alertCRD, err)
	}
	if obj.APIVersion != "monitoring.coreos.com/v1" || obj.Kind != "PrometheusRule" {
		t.Errorf("%s is a %s %s, want a monitoring.coreos.com/v1 PrometheusRule", alertCRD, obj.APIVersion, obj.Kind)
	}
	if len(obj.Spec.Groups) == 0 {
		t.Errorf("%s has no rule groups", alertCRD)
	}
}

// grafanaPanel is what the tests read of a Grafana panel.
type grafanaPanel struct {
	ID         int
	Type       string
	Title      string
	Datasource struct{ Type, UID string }
	GridPos    struct{ X, Y, W, H int }
	Targets    []struct {
		Expr       string
		Datasource struct{ Type, UID string }
	}
	Panels []grafanaPanel // those of a collapsed row
}

type grafanaDashboard struct {
	SchemaVersion int
	Panels        []grafanaPanel
	Templating    struct {
		List []struct {
			Name, Type, Definition string
			Query                  json.RawMessage // a string, or {"query": ...}
		}
	}
}

func readDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	var d grafanaDashboard
	if err := json.Unmarshal(must(os.ReadFile(dashboard)), &d); err != nil {
		t.Fatalf("%s: %v", dashboard, err)
	}
	return d
}

// panels returns every panel of d but rows, with those in collapsed rows.
func (d grafanaDashboard) panels() []grafanaPanel {
	var out []grafanaPanel
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if p.Type != "row" {
				out = append(out, p)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// queries returns every PromQL query of d: its panels' and its
// variables'.
func (d grafanaDashboard) queries() []string {
	var out []string
	for _, p := range d.panels() {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var s string
		var obj struct{ Query string }
		if json.Unmarshal(v.Query, &s) != nil && json.Unmarshal(v.Query, &obj) == nil {
			s = obj.Query
		}
		for _, q := range []string{s, v.Definition} {
			// label_values(QUERY, LABEL) is Grafana's; QUERY is PromQL.
			if m := labelValuesRE.FindStringSubmatch(q); m != nil {
				q = m[1]
			}
			out = append(out, q)
		}
	}
	return out
}

var labelValuesRE = regexp.MustCompile(`^\s*label_values\((.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`)

// TestDashboardIsWellFormed checks what Grafana needs to import the
// dashboard anywhere: a datasource variable every query goes through, a
// node variable every query follows, unique panel IDs on a 24-column grid.
func TestDashboardIsWellFormed(t *testing.T) {
	d := readDashboard(t)
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d, want at least 36 (Grafana 9: datasources by uid)", d.SchemaVersion)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["instance"] != "query" {
		t.Errorf("variables %v, want datasource (a datasource) and instance (a query)", vars)
	}
	ids := map[int]string{}
	panels := d.panels()
	if len(panels) == 0 {
		t.Fatal("the dashboard has no panels")
	}
	for _, p := range panels {
		if other, ok := ids[p.ID]; ok {
			t.Errorf("panels %q and %q have the same id %d", other, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q lies outside the 24-column grid: %+v", p.Title, p.GridPos)
		}
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q uses datasource %q, not ${datasource}", p.Title, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Datasource.UID != "${datasource}" {
				t.Errorf("a query of panel %q uses datasource %q, not ${datasource}", p.Title, tg.Datasource.UID)
			}
			if !strings.Contains(tg.Expr, `instance=~"$instance"`) {
				t.Errorf("query %q of panel %q does not follow the node variable ($instance)", tg.Expr, p.Title)
			}
		}
	}
}

// TestDashboardUsesExportedMetrics checks that the dashboard asks only for
// metrics weftd exports, and shows the key ones.
func TestDashboardUsesExportedMetrics(t *testing.T) {
	queries := readDashboard(t).queries()
	used := checkExported(t, dashboard, queries)
	for _, m := range keyMetrics {
		if !used[m] {
			t.Errorf("%s shows no %s", dashboard, m)
		}
	}
	for _, m := range daemon.MetricNames() {
		if !used[m] {
			t.Logf("weftd exports %s, which the dashboard does not show", m)
		}
	}
}

// grafanaVars are Grafana's variables in the dashboard's queries and what
// they stand for when promtool parses them.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "$instance", ".*")

// TestDashboardQueriesParse has promtool parse every query of the
// dashboard, as recording rules, with Grafana's variables filled in.
func TestDashboardQueriesParse(t *testing.T) {
	p := promtool(t)
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for i, q := range readDashboard(t).queries() {
		rules = append(rules, rule{Record: "dashboard:query_" + strconv.Itoa(i), Expr: grafanaVars.Replace(q)})
	}
	file := map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}}
	path := filepath.Join(t.TempDir(), "dashboard-queries.yaml")
	if err := os.WriteFile(path, must(yaml.Marshal(file)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(p, "check", "rules", path).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules (the dashboard's queries): %v\n%s", err, out)
	}
}

// metricRE finds the weft metrics a PromQL expression names.
var metricRE = regexp.MustCompile(`\bweft_[A-Za-z0-9_:]+`)

// checkExported fails t for each weft metric exprs (from file) name that
// weftd does not export, and returns those it does: a histogram's
// _bucket, _count and _sum series count as the histogram.
func checkExported(t *testing.T, file string, exprs []string) map[string]bool {
	t.Helper()
	exported := map[string]bool{}
	for _, m := range daemon.MetricNames() {
		exported[m] = true
	}
	used := map[string]bool{}
	for _, e := range exprs {
		for _, name := range metricRE.FindAllString(e, -1) {
			m := name
			for _, suffix := range []string{"_bucket", "_count", "_sum"} {
				if base, ok := strings.CutSuffix(name, suffix); ok && exported[base] {
					m = base
				}
			}
			if !exported[m] {
				t.Errorf("%s uses %s in %q, which weftd does not export (it exports %v)", file, name, e, slices.Sorted(maps.Keys(exported)))
				continue
			}
			used[m] = true
		}
	}
	if len(used) == 0 {
		t.Errorf("found no weft metric in %s", file)
	}
	return used
}
