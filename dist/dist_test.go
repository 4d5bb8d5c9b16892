// Package dist holds weft's packaging; this test keeps it in step with the
// code.
package dist

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
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

func TestKubernetesManifests(t *testing.T) {
	for file, kinds := range map[string][]string{
		"kubernetes/weft.yaml":      {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"},
		"kubernetes/weft-etcd.yaml": {"Namespace", "ConfigMap", "DaemonSet"},
	} {
		t.Run(file, func(t *testing.T) { checkManifest(t, file, kinds) })
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

func checkManifest(t *testing.T, file string, want []string) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	flags := weftdFlags(t)
	kinds := map[string]bool{}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		kind, _ := obj["kind"].(string)
		kinds[kind] = true
		switch kind {
		case "ConfigMap":
			d := obj["data"].(map[string]any)
			if _, _, err := subnet.ParseConfig([]byte(d["net-conf.json"].(string))); err != nil {
				t.Errorf("ConfigMap net-conf.json: %v", err)
			}
			checkConflist(t, []byte(d["cni-conf.json"].(string)))
		case "DaemonSet":
			js, _ := json.Marshal(obj)
			var ds struct {
				Spec struct {
					Template struct {
						Spec struct {
							Containers []struct {
								Command []string
								Args    []string
								Env     []struct{ Name string }
							}
						}
					}
				}
			}
			json.Unmarshal(js, &ds)
			c := ds.Spec.Template.Spec.Containers[0]
			if len(c.Command) == 0 || c.Command[0] != "/usr/local/bin/weftd" {
				t.Errorf("weftd container runs %v", c.Command)
			}
			for _, a := range c.Args {
				name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
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
		}
	}
	for _, k := range want {
		if !kinds[k] {
			t.Errorf("%s has no %s", file, k)
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

func TestDockerfileCopiesWhatMakeBuildBuilds(t *testing.T) {
	dockerfile, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dockerfile), "RUN make build") {
		t.Error("the Dockerfile does not build with make build")
	}
	m := regexp.MustCompile(`COPY --from=build ((?:/src/bin/\S+ )+)/usr/local/bin/`).FindStringSubmatch(string(dockerfile))
	if m == nil {
		t.Fatal("the Dockerfile copies no binaries from /src/bin/")
	}
	for _, p := range strings.Fields(m[1]) {
		name := strings.TrimPrefix(p, "/src/bin/")
		if _, err := os.Stat("../cmd/" + name); err != nil {
			t.Errorf("the Dockerfile copies %s, which make build does not build (no cmd/%s)", p, name)
		}
	}
	manifest, _ := os.ReadFile("kubernetes/weft.yaml")
	for _, used := range []string{"/usr/local/bin/weft ", "/usr/local/bin/weftd", "/usr/local/bin/weftctl"} {
		name := strings.TrimSpace(strings.TrimPrefix(used, "/usr/local/bin/"))
		if strings.Contains(string(manifest), used) && !strings.Contains(m[1], "/src/bin/"+name+" ") {
			t.Errorf("the manifest uses %s but the image does not have it", used)
		}
	}
}
