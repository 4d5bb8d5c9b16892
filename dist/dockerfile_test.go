package dist

// The image is built from ../Dockerfile with the context ../.dockerignore
// leaves. No container engine runs here, so these tests read both the way
// `docker build` does — the Dockerfile with BuildKit's own parser and the
// lint rules it applies while parsing, .dockerignore with BuildKit's matcher
// — and check what the manifests and a user building the image rely on.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// dockerfile is ../Dockerfile as BuildKit reads it.
type dockerfile struct {
	stages   []instructions.Stage
	metaArgs []instructions.ArgCommand // the ARGs before the first FROM
	lex      *shell.Lex
}

// parseDockerfile parses ../Dockerfile, failing t on a parse error and
// reporting every warning of the parser and of BuildKit's lint rules.
func parseDockerfile(t *testing.T) dockerfile {
	t.Helper()
	f, err := os.Open("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("parsing the Dockerfile: %v", err)
	}
	for _, w := range res.Warnings {
		line := 0
		if w.Location != nil {
			line = w.Location.Start.Line
		}
		t.Errorf("Dockerfile:%d: %s", line, w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, url, msg string, loc []parser.Range) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		t.Errorf("Dockerfile:%d: %s: %s (%s)", line, rule, msg, url)
	}})
	stages, metaArgs, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("reading the Dockerfile's instructions: %v", err)
	}
	if len(stages) == 0 {
		t.Fatal("the Dockerfile has no FROM")
	}
	return dockerfile{stages: stages, metaArgs: metaArgs, lex: shell.NewLex(res.EscapeToken)}
}

// stage returns the stage named name.
func (d dockerfile) stage(t *testing.T, name string) instructions.Stage {
	t.Helper()
	for _, s := range d.stages {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("the Dockerfile has no stage %q", name)
	return instructions.Stage{}
}

// final returns the last stage: the image.
func (d dockerfile) final() instructions.Stage { return d.stages[len(d.stages)-1] }

// vars returns the variables word refers to ($X, ${X}, ${X:-...}).
func (d dockerfile) vars(t *testing.T, word string) []string {
	t.Helper()
	res, err := d.lex.ProcessWordWithMatches(word, shell.EnvsFromSlice(nil))
	if err != nil {
		t.Fatalf("expanding %q: %v", word, err)
	}
	var names []string
	for name := range res.Unmatched {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// words returns what cmd says that BuildKit or the shell expands, in
// order: RUN's command line, ENV and LABEL values, COPY's paths.
func words(cmd instructions.Command) []string {
	switch c := cmd.(type) {
	case *instructions.RunCommand:
		return c.CmdLine
	case *instructions.EnvCommand:
		var w []string
		for _, kv := range c.Env {
			w = append(w, kv.Value)
		}
		return w
	case *instructions.LabelCommand:
		var w []string
		for _, kv := range c.Labels {
			w = append(w, kv.Value)
		}
		return w
	case *instructions.CopyCommand:
		return append(slices.Clone(c.SourcePaths), c.DestPath)
	}
	return nil
}

// splitRef splits an image reference into its name, tag and digest.
func splitRef(ref string) (name, tag, digest string) {
	name, digest, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name, tag = name[:i], name[i+1:]
	}
	return name, tag, digest
}

// platformArgs are the ARGs BuildKit sets itself; like any ARG, a stage
// sees one only after declaring it.
var platformArgs = []string{
	"TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT",
	"BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT",
}

func TestDockerfileStages(t *testing.T) {
	d := parseDockerfile(t)
	if len(d.stages) < 2 {
		t.Fatalf("the Dockerfile has %d stage, want a build stage and the image", len(d.stages))
	}
	var defaults []string
	for _, a := range d.metaArgs {
		for _, kv := range a.Args {
			defaults = append(defaults, kv.Key+"="+kv.ValueString())
		}
	}
	var names []string
	for _, s := range d.stages {
		if slices.Contains(names, s.BaseName) {
			names = append(names, s.Name)
			continue
		}
		base, err := d.lex.ProcessWordWithMatches(s.BaseName, shell.EnvsFromSlice(defaults))
		if err != nil {
			t.Fatalf("expanding FROM %s: %v", s.BaseName, err)
		}
		if _, tag, digest := splitRef(base.Result); digest == "" && (tag == "" || tag == "latest") {
			t.Errorf("FROM %s: pin the image to a version (a tag other than latest, or a digest)", s.BaseName)
		}
		names = append(names, s.Name)
	}
	final := d.final()
	if slices.Contains(names[:len(names)-1], final.BaseName) {
		t.Errorf("the image starts FROM the stage %s; it should start from a small base and copy the binaries in", final.BaseName)
	}
	// The manifests' install step runs /bin/sh -c "cp ... && mv ...".
	// Images known to have all three where a shell is looked for:
	// distroless's :debug, for one, keeps its busybox in /busybox.
	shells := map[string]bool{"busybox": true, "alpine": true, "debian": true}
	if name, _, _ := splitRef(final.BaseName); !shells[name] {
		t.Errorf("the image is FROM %s, not known to have /bin/sh, cp and mv for the CNI install step", final.BaseName)
	}
	for _, file := range []string{"kubernetes/weft.yaml", "kubernetes/weft-etcd.yaml"} {
		if manifest := must(os.ReadFile(file)); !strings.Contains(string(manifest), `command: ["/bin/sh", "-c"]`) {
			t.Errorf("%s's install step no longer runs /bin/sh -c: update this test's idea of what the base needs", file)
		}
	}
}

func TestDockerfileCrossCompiles(t *testing.T) {
	d := parseDockerfile(t)
	build := d.stage(t, "build")
	if build.Platform != "$BUILDPLATFORM" {
		t.Errorf("the build stage runs on --platform=%q, want $BUILDPLATFORM: the builder's own, cross-compiling for the target", build.Platform)
	}
	// GOOS and GOARCH come from TARGETOS and TARGETARCH, set in ENV or on
	// the command line that runs make.
	for goVar, arg := range map[string]string{"GOOS": "TARGETOS", "GOARCH": "TARGETARCH"} {
		set := false
		for _, cmd := range build.Commands {
			switch c := cmd.(type) {
			case *instructions.EnvCommand:
				for _, kv := range c.Env {
					set = set || kv.Key == goVar && slices.Equal(d.vars(t, kv.Value), []string{arg})
				}
			case *instructions.RunCommand:
				set = set || regexp.MustCompile(`\b`+goVar+`=\$\{?`+arg+`\b`).MatchString(strings.Join(c.CmdLine, " "))
			}
		}
		if !set {
			t.Errorf("the build stage does not set %s=$%s", goVar, arg)
		}
	}

	// A stage sees an ARG — its own, a global one, BuildKit's platform
	// ones — only after declaring it; an undeclared one expands to "" and
	// the build goes on: GOARCH="" builds for the builder's architecture.
	args := slices.Clone(platformArgs)
	for _, a := range d.metaArgs {
		for _, kv := range a.Args {
			args = append(args, kv.Key)
		}
	}
	for _, s := range d.stages {
		for _, cmd := range s.Commands {
			if a, ok := cmd.(*instructions.ArgCommand); ok {
				for _, kv := range a.Args {
					args = append(args, kv.Key)
				}
			}
		}
	}
	for i, s := range d.stages {
		name := s.Name
		if name == "" {
			name = fmt.Sprintf("%d (FROM %s)", i, s.BaseName)
		}
		var declared []string
		for _, cmd := range s.Commands {
			if a, ok := cmd.(*instructions.ArgCommand); ok {
				for _, kv := range a.Args {
					declared = append(declared, kv.Key)
				}
			}
			for _, w := range words(cmd) {
				for _, v := range d.vars(t, w) {
					if slices.Contains(args, v) && !slices.Contains(declared, v) {
						t.Errorf("stage %s: %s uses $%s before an ARG %s in the stage; it expands to nothing", name, cmd.Name(), v, v)
					}
				}
			}
		}
	}
}

func TestDockerfileImage(t *testing.T) {
	d := parseDockerfile(t)
	build, final := d.stage(t, "build"), d.final()

	// The build: make build, so that the flags are the Makefile's, with
	// the version the labels state.
	var workdir, makes string
	for _, cmd := range build.Commands {
		switch c := cmd.(type) {
		case *instructions.WorkdirCommand:
			workdir = c.Path
		case *instructions.RunCommand:
			if line := strings.Join(c.CmdLine, " "); strings.Contains(line, "make build") {
				makes = line
			}
		}
	}
	if makes == "" {
		t.Error("the build stage does not run make build")
	} else if !regexp.MustCompile(`\bVERSION=\$\{?VERSION\b`).MatchString(makes) {
		t.Errorf("the build stage runs %q, without VERSION=$VERSION: the binaries' version would not be the label's", makes)
	}

	labels := map[string]string{}
	var entrypoint *instructions.EntrypointCommand
	var copied []string
	for _, cmd := range final.Commands {
		switch c := cmd.(type) {
		case *instructions.LabelCommand:
			for _, kv := range c.Labels {
				labels[kv.Key] = strings.Trim(kv.Value, `"`)
			}
		case *instructions.EntrypointCommand:
			entrypoint = c
		case *instructions.CopyCommand:
			if c.From != build.Name {
				t.Errorf("the image copies %v from %q, not from the build stage", c.SourcePaths, c.From)
				continue
			}
			if c.DestPath != "/usr/local/bin/" {
				t.Errorf("the image copies %v to %s, want /usr/local/bin/ (the manifests' paths)", c.SourcePaths, c.DestPath)
			}
			for _, src := range c.SourcePaths {
				if filepath.Dir(src) != filepath.Join(workdir, "bin") {
					t.Errorf("the image copies %s, not a binary make build writes to %s/bin", src, workdir)
				}
				copied = append(copied, filepath.Base(src))
			}
		}
	}

	// OCI labels: what registries and scanners show, and which commit the
	// image is.
	module := strings.TrimPrefix(strings.SplitN(string(must(os.ReadFile("../go.mod"))), "\n", 2)[0], "module ")
	want := map[string]func(string) bool{
		"org.opencontainers.image.title":       func(v string) bool { return v != "" },
		"org.opencontainers.image.description": func(v string) bool { return v != "" },
		"org.opencontainers.image.source":      func(v string) bool { return v == "https://"+module },
		"org.opencontainers.image.version":     func(v string) bool { return slices.Equal(d.vars(t, v), []string{"VERSION"}) },
		"org.opencontainers.image.revision":    func(v string) bool { return slices.Equal(d.vars(t, v), []string{"REVISION"}) },
	}
	if licences, _ := filepath.Glob("../LICEN[CS]E*"); len(licences) > 0 {
		want["org.opencontainers.image.licenses"] = func(v string) bool { return v != "" }
	}
	for key, ok := range want {
		if v, set := labels[key]; !set {
			t.Errorf("the image has no label %s", key)
		} else if !ok(v) {
			t.Errorf("the image's label %s is %q", key, v)
		}
	}

	// The image runs weftd, in exec form: weftd is PID 1 and gets SIGTERM.
	if entrypoint == nil || entrypoint.PrependShell || !slices.Equal(entrypoint.CmdLine, []string{"/usr/local/bin/weftd"}) {
		t.Errorf(`the image's ENTRYPOINT is %v, want ["/usr/local/bin/weftd"]`, entrypoint)
	}

	// The binaries: every command in cmd/ but weft-etcd, the etcd server
	// for tests and the sandbox (not for production).
	var commands []string
	for _, e := range must(os.ReadDir("../cmd")) {
		if e.IsDir() && e.Name() != "weft-etcd" {
			commands = append(commands, e.Name())
		}
	}
	slices.Sort(copied)
	if !slices.Equal(copied, commands) {
		t.Errorf("the image has %v, cmd/ builds %v (and weft-etcd, which stays out)", copied, commands)
	}
	for _, file := range []string{"kubernetes/weft.yaml", "kubernetes/weft-etcd.yaml"} {
		for _, m := range regexp.MustCompile(`/usr/local/bin/([a-z-]+)`).FindAllStringSubmatch(string(must(os.ReadFile(file))), -1) {
			if !slices.Contains(copied, m[1]) {
				t.Errorf("%s runs %s, which the image lacks", file, m[0])
			}
		}
	}
}

// TestDockerfileContext checks the build context .dockerignore leaves:
// everything make build compiles, and no large file.
func TestDockerfileContext(t *testing.T) {
	f, err := os.Open("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatalf("reading .dockerignore: %v", err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	excluded := func(path string) bool {
		ex, err := pm.MatchesOrParentMatches(path)
		if err != nil {
			t.Fatalf(".dockerignore against %s: %v", path, err)
		}
		return ex
	}

	for _, path := range []string{".git/HEAD", "bin/weftd", "bin/kube-apiserver", "bin/microbench.txt", "weftd",
		"e2e/e2e.test", "internal/proxy/proxy.test", "cover.out", "subnet/cpu.pprof", "dist/out/weft.tar"} {
		if !excluded(path) {
			t.Errorf(".dockerignore lets %s into the build context", path)
		}
	}

	// What make build reads: the module's files and, for every package of
	// this module that ./cmd/... needs, its Go files and what they embed.
	needed := []string{"go.mod", "go.sum", "Makefile"}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-deps", "-json=Dir,Module,GoFiles,SFiles,EmbedFiles", "./cmd/...")
	cmd.Dir = root
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(bufio.NewReader(out))
	for dec.More() {
		var p struct {
			Dir                         string
			Module                      *struct{ Main bool }
			GoFiles, SFiles, EmbedFiles []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("go list: %v", err)
		}
		if p.Module == nil || !p.Module.Main {
			continue
		}
		for _, name := range slices.Concat(p.GoFiles, p.SFiles, p.EmbedFiles) {
			rel, _ := filepath.Rel(root, filepath.Join(p.Dir, name))
			needed = append(needed, filepath.ToSlash(rel))
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list: %v", err)
	}
	if len(needed) < 20 {
		t.Fatalf("go list found only %v", needed)
	}
	for _, path := range needed {
		if excluded(path) {
			t.Errorf(".dockerignore leaves out %s, which make build needs", path)
		}
	}

	// Nothing large is sent: walk the tree as docker build would.
	const limit = 1 << 20
	err = filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if rel == "." {
			return nil
		}
		if excluded(filepath.ToSlash(rel)) {
			if e.IsDir() && !pm.Exclusions() {
				return filepath.SkipDir
			}
			return nil
		}
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() && info.Size() > limit {
			t.Errorf("docker build would send %s (%.1f MB): add it to .dockerignore", rel, float64(info.Size())/(1<<20))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
