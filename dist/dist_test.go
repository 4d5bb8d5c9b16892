// Package dist holds weft's packaging; this test keeps it in step with the
// code.
package dist

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/version"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/weft-net/weft/cni"
	"github.com/weft-net/weft/internal/testenv"
	"github.com/weft-net/weft/subnet"
)

// weftdFlags returns the flags `weftd --help` lists.
func weftdFlags(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command(testenv.Binary(t, "weftd"), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("weftd --help: %v\n%s", err, out)
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`--([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	return flags
}

func TestSystemdUnitUsesRealFlags(t *testing.T) {
	flags := weftdFlags(t)
	env, err := os.ReadFile("systemd/weftd.env")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(env), "\n") {
		line = strings.TrimPrefix(strings.TrimSpace(line), "#")
		name, _, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(name, "WEFTD_") {
			continue
		}
		flag := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, "WEFTD_"), "_", "-"))
		if !flags[flag] {
			t.Errorf("weftd.env sets %s but weftd has no --%s", name, flag)
		}
	}
	unit, _ := os.ReadFile("systemd/weftd.service")
	for _, want := range []string{"Type=notify", "EnvironmentFile=/etc/weft/weftd.env", "ExecStart=/usr/local/bin/weftd", "Restart=always", "RestartPreventExitStatus=2"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("weftd.service lacks %q", want)
		}
	}
}

// TestSystemdUnitIsHardened checks the unit with systemd's own tools:
// systemd-analyze verify finds nothing wrong in it (with ExecStart
// pointing at a built weftd, as /usr/local/bin/weftd need not exist here),
// and systemd-analyze security rates its exposure at most 4.0 ("OK").
func TestSystemdUnitIsHardened(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		testenv.Unavailable(t, "no systemd-analyze (Debian package systemd): %v", err)
	}
	unit, err := os.ReadFile("systemd/weftd.service")
	if err != nil {
		t.Fatal(err)
	}

	copied := filepath.Join(t.TempDir(), "weftd.service")
	execStart := "ExecStart=" + testenv.Binary(t, "weftd")
	if err := os.WriteFile(copied, bytes.Replace(unit, []byte("ExecStart=/usr/local/bin/weftd"), []byte(execStart), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", copied).CombinedOutput()
	// Warnings (an unknown setting, say) do not change the exit status;
	// those about other units on this machine are not this test's business.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "weftd.service") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
	if err != nil {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	out, err = exec.Command(analyze, "security", "--offline=yes", "systemd/weftd.service").CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for weftd\.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security printed no overall exposure level:\n%s", out)
	}
	if score, err := strconv.ParseFloat(string(m[1]), 64); err != nil || score > 4.0 {
		t.Errorf("weftd.service's exposure level is %s, want at most 4.0:\n%s", m[1], out)
	}
}

// The Kubernetes manifests and what each must hold.
var manifestKinds = map[string][]string{
	"kubernetes/weft.yaml":      {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"},
	"kubernetes/weft-etcd.yaml": {"Namespace", "ConfigMap", "DaemonSet"},
}

func TestKubernetesManifests(t *testing.T) {
	flags := weftdFlags(t)
	peak := measuredPeakMiB(t)
	images := map[string]string{}
	for file, kinds := range manifestKinds {
		t.Run(file, func(t *testing.T) {
			m := readManifest(t, file)
			for _, k := range kinds {
				if m.objects[k] == nil {
					t.Errorf("%s has no %s", file, k)
				}
			}
			if cm, ok := m.objects["ConfigMap"].(*corev1.ConfigMap); ok {
				checkConfigMap(t, cm)
			}
			if ds, ok := m.objects["DaemonSet"].(*appsv1.DaemonSet); ok {
				images[file] = checkDaemonSet(t, ds, flags, peak)
			}
		})
	}
	if images["kubernetes/weft.yaml"] != images["kubernetes/weft-etcd.yaml"] {
		t.Errorf("the manifests run different images: %v", images)
	}
	if !bytes.Equal(KubeManifest, must(os.ReadFile("kubernetes/weft.yaml"))) {
		t.Error("KubeManifest is not kubernetes/weft.yaml")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// manifest is a manifest's objects by kind, each decoded strictly into the
// Kubernetes API's own type: a misspelt or misplaced field fails, as it
// fails kubectl apply's strict validation.
type manifest struct{ objects map[string]any }

// apiTypes are the kinds the manifests may hold, by apiVersion and kind.
var apiTypes = map[metav1.TypeMeta]func() any{
	{APIVersion: "v1", Kind: "Namespace"}:                                    func() any { return &corev1.Namespace{} },
	{APIVersion: "v1", Kind: "ServiceAccount"}:                               func() any { return &corev1.ServiceAccount{} },
	{APIVersion: "v1", Kind: "ConfigMap"}:                                    func() any { return &corev1.ConfigMap{} },
	{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"}:        func() any { return &rbacv1.ClusterRole{} },
	{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"}: func() any { return &rbacv1.ClusterRoleBinding{} },
	{APIVersion: "apps/v1", Kind: "DaemonSet"}:                               func() any { return &appsv1.DaemonSet{} },
}

func readManifest(t *testing.T, file string) manifest {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	m := manifest{objects: map[string]any{}}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		newObj, ok := apiTypes[meta]
		if !ok {
			t.Errorf("%s: %s %s is not a kind this test knows", file, meta.APIVersion, meta.Kind)
			continue
		}
		if m.objects[meta.Kind] != nil {
			t.Errorf("%s: more than one %s", file, meta.Kind)
		}
		obj := newObj()
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Errorf("%s: %s: %v", file, meta.Kind, err)
		}
		m.objects[meta.Kind] = obj
	}
	return m
}

// checkConfigMap checks that net-conf.json parses and that the conflist
// the init container installs is dist/cni/10-weft.conflist.
func checkConfigMap(t *testing.T, cm *corev1.ConfigMap) {
	t.Helper()
	if _, _, err := subnet.ParseConfig([]byte(cm.Data["net-conf.json"])); err != nil {
		t.Errorf("ConfigMap net-conf.json: %v", err)
	}
	conflist := []byte(cm.Data["cni-conf.json"])
	checkConflist(t, conflist)
	var got, want any
	json.Unmarshal(conflist, &got)
	json.Unmarshal(must(os.ReadFile("cni/10-weft.conflist")), &want)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the ConfigMap's cni-conf.json is not cni/10-weft.conflist:\n%s", conflist)
	}
}

// Where client-go's in-cluster configuration reads the ServiceAccount's
// token and the cluster's CA.
const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// checkDaemonSet checks weftd's DaemonSet against weftd's flags (from
// `weftd --help`) and the peak resident set measured (in MiB), and
// returns the image it runs.
func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet, flags map[string]bool, peakMiB float64) (image string) {
	t.Helper()
	pod := ds.Spec.Template
	if sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector); err != nil || !sel.Matches(labels.Set(pod.Labels)) {
		t.Errorf("the DaemonSet's selector %v does not select its pods (labels %v): %v", ds.Spec.Selector, pod.Labels, err)
	}
	spec := pod.Spec
	if len(spec.Containers) == 0 {
		t.Fatal("the DaemonSet has no container")
	}
	c := spec.Containers[0]
	if len(c.Command) == 0 || c.Command[0] != "/usr/local/bin/weftd" {
		t.Errorf("weftd container runs %v", c.Command)
	}
	args := map[string]string{}
	for _, a := range c.Args {
		name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		args[name] = value
		if !flags[name] {
			t.Errorf("DaemonSet passes %s but weftd has no --%s", a, name)
		}
	}
	for _, e := range c.Env {
		flag := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(e.Name, "WEFTD_"), "_", "-"))
		if !flags[flag] {
			t.Errorf("DaemonSet sets %s but weftd has no --%s", e.Name, flag)
		}
	}

	// Linux nodes only: every term of the node affinity requires it.
	var terms []corev1.NodeSelectorTerm
	if a := spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		terms = a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	}
	linux := len(terms) > 0
	for _, term := range terms {
		linux = linux && slices.ContainsFunc(term.MatchExpressions, func(r corev1.NodeSelectorRequirement) bool {
			return r.Key == corev1.LabelOSStable && r.Operator == corev1.NodeSelectorOpIn && slices.Equal(r.Values, []string{"linux"})
		})
	}
	if !linux {
		t.Errorf("the DaemonSet's node affinity does not require %s=linux: %+v", corev1.LabelOSStable, spec.Affinity)
	}

	// One image, weft's, at a version.
	for _, ic := range slices.Concat(spec.InitContainers, spec.Containers) {
		if image == "" {
			image = ic.Image
		}
		name, tag, digest := splitRef(ic.Image)
		if name != "ghcr.io/weft-net/weft" || digest == "" && (tag == "" || tag == "latest") {
			t.Errorf("container %s runs %s, want ghcr.io/weft-net/weft at a version (a tag other than latest, or a digest)", ic.Name, ic.Image)
		}
		if ic.Image != image {
			t.Errorf("container %s runs %s, another container %s", ic.Name, ic.Image, image)
		}
	}

	// No ServiceAccount token but weftd's, and weftd's only when it talks
	// to the API server.
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the DaemonSet's pods get the ServiceAccount's token automatically: set automountServiceAccountToken: false")
	}
	tokenVolumes := map[string]bool{}
	for _, v := range spec.Volumes {
		if v.Projected == nil {
			continue
		}
		var token, ca bool
		for _, s := range v.Projected.Sources {
			token = token || s.ServiceAccountToken != nil && s.ServiceAccountToken.Path == "token"
			ca = ca || s.ConfigMap != nil && s.ConfigMap.Name == "kube-root-ca.crt" &&
				slices.Contains(s.ConfigMap.Items, corev1.KeyToPath{Key: "ca.crt", Path: "ca.crt"})
		}
		tokenVolumes[v.Name] = token && ca
	}
	_, kube := args["kube-subnet-mgr"]
	weftdHasToken := false
	for _, ic := range slices.Concat(spec.InitContainers, spec.Containers) {
		for _, vm := range ic.VolumeMounts {
			if !tokenVolumes[vm.Name] {
				continue
			}
			if kube && ic.Name == c.Name && vm.MountPath == serviceAccountDir {
				weftdHasToken = true
			} else {
				t.Errorf("container %s mounts the ServiceAccount's token at %s", ic.Name, vm.MountPath)
			}
		}
	}
	if kube && !weftdHasToken {
		t.Errorf("weftd (--kube-subnet-mgr) has no projected token and ca.crt at %s", serviceAccountDir)
	}

	// /metrics, /healthz and /readyz on --metrics-addr, reachable at the
	// node's address, which is the pod's (hostNetwork).
	host, portText, err := net.SplitHostPort(args["metrics-addr"])
	if err != nil {
		t.Fatalf("weftd's --metrics-addr %q: %v", args["metrics-addr"], err)
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		t.Errorf("--metrics-addr=%s is not reachable by the kubelet or Prometheus", args["metrics-addr"])
	}
	port, _ := strconv.Atoi(portText)
	i := slices.IndexFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "metrics" })
	if i < 0 {
		t.Fatalf("weftd has no port named metrics: %v", c.Ports)
	}
	if p := c.Ports[i]; int(p.ContainerPort) != port || p.HostPort != p.ContainerPort || p.Protocol != corev1.ProtocolTCP || !spec.HostNetwork {
		t.Errorf("weftd's port metrics is %+v (hostNetwork %v), want TCP %d on the node (--metrics-addr=%s)", p, spec.HostNetwork, port, args["metrics-addr"])
	}
	for key, want := range map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": portText, "prometheus.io/path": "/metrics"} {
		if got := pod.Annotations[key]; got != want {
			t.Errorf("the pods' annotation %s is %q, want %q", key, got, want)
		}
	}
	for _, probe := range []struct {
		name, path string
		probe      *corev1.Probe
		minWait    int32 // failures × period, seconds
	}{{"readiness", "/readyz", c.ReadinessProbe, 0}, {"liveness", "/healthz", c.LivenessProbe, 60}} {
		p := probe.probe
		if p == nil || p.HTTPGet == nil {
			t.Errorf("weftd has no HTTP %s probe on %s", probe.name, probe.path)
			continue
		}
		if p.HTTPGet.Path != probe.path || p.HTTPGet.Port.String() != "metrics" && p.HTTPGet.Port.IntValue() != port {
			t.Errorf("weftd's %s probe asks %s on port %s, want %s on %d", probe.name, p.HTTPGet.Path, p.HTTPGet.Port.String(), probe.path, port)
		}
		failures, period := p.FailureThreshold, p.PeriodSeconds
		if failures == 0 {
			failures = 3 // Kubernetes' default
		}
		if period == 0 {
			period = 10
		}
		if failures*period < probe.minWait {
			t.Errorf("weftd's %s probe gives up after %d s, want at least %d s", probe.name, failures*period, probe.minWait)
		}
	}

	// Resources: the request holds the resident set make bench measured;
	// the limit leaves room above it.
	mib := func(q resource.Quantity) float64 { return float64(q.Value()) / (1 << 20) }
	req, lim := c.Resources.Requests, c.Resources.Limits
	if req.Cpu().IsZero() {
		t.Error("weftd requests no CPU")
	}
	if got := mib(*req.Memory()); got < peakMiB {
		t.Errorf("weftd requests %.0f MiB of memory, less than the peak resident set docs/benchmarks.md measured (%.1f MiB)", got, peakMiB)
	}
	if got := mib(*lim.Memory()); got < 2*peakMiB {
		t.Errorf("weftd's memory limit is %.0f MiB, want at least twice the measured peak (%.1f MiB)", got, peakMiB)
	}
	return image
}

// measuredPeakMiB is the highest peak resident set of weftd in
// docs/benchmarks.md, which make bench writes ("| 45.2 MB (25.0 MB) /
// 44.2 MB |": peak, the binary's pages, median; its MB are MiB).
func measuredPeakMiB(t *testing.T) float64 {
	t.Helper()
	peak := 0.0
	for _, m := range regexp.MustCompile(`\| ([0-9.]+) MB \([0-9.]+ MB\) / [0-9.]+ MB \|`).FindAllStringSubmatch(string(must(os.ReadFile("../docs/benchmarks.md"))), -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		peak = max(peak, v)
	}
	if peak == 0 {
		t.Fatal("docs/benchmarks.md has no resident set of weftd (| peak MB (file MB) / median MB |)")
	}
	return peak
}

// podMonitor is the part of the Prometheus Operator's PodMonitor
// (monitoring.coreos.com/v1) that weft-podmonitor.yaml uses; its module
// is not one of weft's dependencies.
type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel            string               `json:"jobLabel"`
		Selector            metav1.LabelSelector `json:"selector"`
		PodMetricsEndpoints []struct {
			Port        string `json:"port"`
			Path        string `json:"path"`
			Interval    string `json:"interval"`
			Relabelings []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
			} `json:"relabelings"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// TestPodMonitor checks that kubernetes/weft-podmonitor.yaml scrapes the
// DaemonSets' pods on their metrics port, as job "weft".
func TestPodMonitor(t *testing.T) {
	var pm podMonitor
	if err := yaml.UnmarshalStrict(must(os.ReadFile("kubernetes/weft-podmonitor.yaml")), &pm); err != nil {
		t.Fatalf("weft-podmonitor.yaml: %v", err)
	}
	if pm.APIVersion != "monitoring.coreos.com/v1" || pm.Kind != "PodMonitor" {
		t.Errorf("weft-podmonitor.yaml holds a %s %s", pm.APIVersion, pm.Kind)
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 {
		t.Fatalf("the PodMonitor has %d endpoints, want 1", len(pm.Spec.PodMetricsEndpoints))
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	if ep.Path != "/metrics" {
		t.Errorf("the PodMonitor scrapes %s, want /metrics", ep.Path)
	}
	sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	if err != nil {
		t.Fatalf("the PodMonitor's selector: %v", err)
	}
	for file := range manifestKinds {
		ds, _ := readManifest(t, file).objects["DaemonSet"].(*appsv1.DaemonSet)
		if ds == nil {
			continue
		}
		pod := ds.Spec.Template
		if ds.Namespace != pm.Namespace || !sel.Matches(labels.Set(pod.Labels)) {
			t.Errorf("the PodMonitor (namespace %s, selector %v) does not select the pods of %s (namespace %s, labels %v)", pm.Namespace, pm.Spec.Selector.MatchLabels, file, ds.Namespace, pod.Labels)
		}
		if job := pod.Labels[pm.Spec.JobLabel]; job != "weft" {
			t.Errorf("the PodMonitor's jobLabel %q makes the job of %s's pods %q, want weft", pm.Spec.JobLabel, file, job)
		}
		if !slices.ContainsFunc(pod.Spec.Containers[0].Ports, func(p corev1.ContainerPort) bool { return p.Name == ep.Port }) {
			t.Errorf("the PodMonitor scrapes port %q, which weftd in %s does not have", ep.Port, file)
		}
	}
}

func TestExampleConflist(t *testing.T) {
	data, err := os.ReadFile("cni/10-weft.conflist")
	if err != nil {
		t.Fatal(err)
	}
	checkConflist(t, data)
}

func checkConflist(t *testing.T, data []byte) {
	t.Helper()
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatalf("conflist: %v", err)
	}
	// libcni sends STATUS and GC (both in the weft plugin, see
	// cni/shipped_conflist_test.go) only to a list of CNI 1.1.0 or later.
	if ok, err := version.GreaterThanOrEqualTo(list.CNIVersion, "1.1.0"); err != nil || !ok {
		t.Errorf("conflist's cniVersion is %s: the runtime sends weft no STATUS and no GC below 1.1.0", list.CNIVersion)
	}
	if list.Plugins[0].Network.Type != "weft" {
		t.Errorf("first plugin is %q, want weft", list.Plugins[0].Network.Type)
	}
	// The runtime injects the list's name and version into each plugin's
	// configuration, as libcni does.
	var conf map[string]any
	json.Unmarshal(list.Plugins[0].Bytes, &conf)
	conf["name"], conf["cniVersion"] = list.Name, list.CNIVersion
	pluginConf, _ := json.Marshal(conf)
	if _, err := cni.LoadConf(pluginConf); err != nil {
		t.Errorf("weft plugin configuration: %v", err)
	}
}
