package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/cli"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/transport"
)

// hotfixApp is a pushApp whose hooks record in shared/which what ran:
// collect (prepare) and migrate (run_once, before_activate) are marked
// hotfix: skip; build (prepare) and after_activate are not. build fails
// while shared/fail exists.
func hotfixApp(t *testing.T) *pushApp {
	t.Helper()
	p := newPushApp(t)
	hooks := "  collect: {when: prepare, hotfix: skip, commands: ['echo collect >> $DROVER_SHARED_DIR/which']}\n" +
		"  build: {when: prepare, hotfix: run, commands: ['echo build >> $DROVER_SHARED_DIR/which', 'test ! -f $DROVER_SHARED_DIR/fail']}\n" +
		"  migrate: {run_once: true, role: web, hotfix: skip, commands: ['echo migrate >> $DROVER_SHARED_DIR/which']}\n" +
		"  after_activate: ['echo after >> $DROVER_SHARED_DIR/which']\n"
	p.repo.Commit("app", map[string]string{"drover.yml": p.yml("log", hooks, localHost)})
	return p
}

// which returns what the hooks wrote since the last call, one word a line.
func (p *pushApp) which() string {
	f := filepath.Join(p.deployTo, "shared", "which")
	b, _ := os.ReadFile(f)
	os.Remove(f)
	return string(b)
}

// hasAll reports whether every release of want is in have.
func hasAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// releases returns the release directories on the host.
func (p *pushApp) releases(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(p.deployTo, "releases"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// newCommit moves main on, so that the next deploy makes a new release.
func (p *pushApp) newCommit(n int) {
	p.repo.Commit(fmt.Sprintf("change %d", n), map[string]string{"change.txt": fmt.Sprint(n)})
}

// options are DeployOptions for p's environment test, output to out.
func (p *pushApp) options(out *bytes.Buffer, output string) *cli.DeployOptions {
	return &cli.DeployOptions{Lease: lock.DefaultLease, Common: cli.Common{File: filepath.Join(p.repo.Dir, "drover.yml"), Env: "test",
		Transport: transport.Options{Binary: p.bin}, IO: cli.IO{Out: out, Err: out, Output: output}}}
}

const hotfixSummary = "skipped for --hotfix: hook collect, hook migrate, cleanup"

// TestHotfixDeploy: `drover deploy --hotfix` runs the hooks not marked
// hotfix: skip and none of the marked ones, removes no old release, and its
// summary (text and JSON) says what it skipped and why; the same deploy
// without --hotfix runs every hook and cleans up.
func TestHotfixDeploy(t *testing.T) {
	p := hotfixApp(t)
	for i := range 3 { // keep_releases: 3
		p.newCommit(i)
		if out, err := p.deploy(t, cli.DeployOptions{}); err != nil {
			t.Fatalf("deploy %d: %v\n%s", i, err, out)
		}
		if got := p.which(); got != "collect\nbuild\nmigrate\nafter\n" {
			t.Fatalf("deploy %d ran hooks %q, want every one", i, got)
		}
	}
	before := p.releases(t)
	if len(before) != 3 {
		t.Fatalf("releases after 3 deploys: %v", before)
	}

	p.newCommit(3)
	out, err := p.deploy(t, cli.DeployOptions{Hotfix: true})
	if err != nil {
		t.Fatalf("deploy --hotfix: %v\n%s", err, out)
	}
	if got := p.which(); got != "build\nafter\n" {
		t.Errorf("deploy --hotfix ran hooks %q, want build and after_activate only", got)
	}
	if !strings.Contains(out, hotfixSummary) {
		t.Errorf("the summary does not say %q:\n%s", hotfixSummary, out)
	}
	after := p.releases(t)
	if len(after) != 4 || !hasAll(after, before) {
		t.Errorf("deploy --hotfix cleaned up: releases %v, before %v", after, before)
	}
	if !strings.Contains(p.current(), p.repo.Head()[:7]) {
		t.Errorf("deploy --hotfix did not activate the new commit: current %s", p.current())
	}

	// -o json names the same skips, each with its reason.
	p.newCommit(4)
	var js bytes.Buffer
	o := p.options(&js, "json")
	var errOut bytes.Buffer
	o.IO.Err = &errOut
	o.Hotfix = true
	if _, err := cli.Deploy(context.Background(), o); err != nil {
		t.Fatalf("deploy --hotfix -o json: %v\n%s%s", err, js.String(), errOut.String())
	}
	var rep rollout.Report
	if err := json.Unmarshal(js.Bytes(), &rep); err != nil {
		t.Fatalf("deploy --hotfix -o json printed no report: %v\n%s", err, js.String())
	}
	var hooks []string
	for _, h := range rep.SkippedHooks {
		hooks = append(hooks, h.Hook+" "+h.Reason)
	}
	if !rep.Hotfix || strings.Join(hooks, ", ") != "collect --hotfix, migrate --hotfix" || rep.SkippedCleanup != "--hotfix" {
		t.Errorf("JSON report: hotfix %v, skipped hooks %v, skipped cleanup %q:\n%s", rep.Hotfix, hooks, rep.SkippedCleanup, js.String())
	}
	if n := len(p.releases(t)); n != 5 {
		t.Errorf("a second hotfix cleaned up: %d releases, want 5", n)
	}
	p.which()

	// A normal deploy cleans up again, down to keep_releases.
	p.newCommit(5)
	if out, err := p.deploy(t, cli.DeployOptions{}); err != nil {
		t.Fatalf("deploy after the hotfix: %v\n%s", err, out)
	} else if strings.Contains(out, "--hotfix") {
		t.Errorf("a normal deploy's summary mentions --hotfix:\n%s", out)
	}
	if got := p.which(); got != "collect\nbuild\nmigrate\nafter\n" {
		t.Errorf("deploy without --hotfix ran hooks %q, want every one", got)
	}
	if n := len(p.releases(t)); n != 3 {
		t.Errorf("a normal deploy after hotfixes left %d releases, want keep_releases 3", n)
	}
}

// TestHotfixResumeAndPrepare: a hotfix deploy that fails in prepare is
// resumed by a plain `drover resume`, which still skips what the hotfix
// skips (the release's record says it is one); `drover prepare --hotfix`
// then `drover activate` does the same.
func TestHotfixResumeAndPrepare(t *testing.T) {
	p := hotfixApp(t)
	ctx := context.Background()
	for i := range 3 {
		p.newCommit(i)
		if out, err := p.deploy(t, cli.DeployOptions{}); err != nil {
			t.Fatalf("deploy %d: %v\n%s", i, err, out)
		}
	}
	p.which()
	before := p.releases(t)
	fail := filepath.Join(p.deployTo, "shared", "fail")
	if err := os.WriteFile(fail, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	p.newCommit(3)
	out, err := p.deploy(t, cli.DeployOptions{Hotfix: true})
	if err == nil {
		t.Fatalf("deploy --hotfix passed a failing build hook:\n%s", out)
	}
	if got := p.which(); got != "build\n" {
		t.Errorf("the failed hotfix ran hooks %q, want build only", got)
	}
	if err := os.Remove(fail); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	if _, err := cli.Resume(ctx, p.options(&log, "")); err != nil {
		t.Fatalf("resume: %v\n%s", err, log.String())
	}
	if got := p.which(); got != "build\nafter\n" {
		t.Errorf("resume of a hotfix ran hooks %q, want build (again, it failed) and after_activate only", got)
	}
	if !strings.Contains(log.String(), hotfixSummary) || !strings.Contains(log.String(), "hotfix") {
		t.Errorf("the resume's summary does not say %q:\n%s", hotfixSummary, log.String())
	}
	if rel := p.releases(t); !hasAll(rel, before) || len(rel) != 4 {
		t.Errorf("resume of a hotfix cleaned up: releases %v, before %v", rel, before)
	}
	if !strings.Contains(p.current(), p.repo.Head()[:7]) {
		t.Errorf("resume did not activate the hotfix: current %s", p.current())
	}

	// prepare --hotfix, then activate: the activation is a hotfix's too.
	p.newCommit(4)
	log.Reset()
	o := p.options(&log, "")
	o.Hotfix = true
	rep, err := cli.Prepare(ctx, o)
	if err != nil {
		t.Fatalf("prepare --hotfix: %v\n%s", err, log.String())
	}
	if got := p.which(); got != "build\n" {
		t.Errorf("prepare --hotfix ran hooks %q, want build only", got)
	}
	if !strings.Contains(log.String(), "\nskipped for --hotfix: hook collect\n") {
		t.Errorf("prepare --hotfix's summary does not name collect alone (prepare never cleans up):\n%s", log.String())
	}
	log.Reset()
	o = p.options(&log, "")
	o.Release = rep.Release
	if _, err := cli.Activate(ctx, o); err != nil {
		t.Fatalf("activate %s: %v\n%s", rep.Release, err, log.String())
	}
	if got := p.which(); got != "after\n" {
		t.Errorf("activating a hotfix release ran hooks %q, want after_activate only", got)
	}
	if !strings.Contains(log.String(), "skipped for --hotfix: hook migrate, cleanup") {
		t.Errorf("activate of a hotfix release does not say what it skipped:\n%s", log.String())
	}
	if rel := p.releases(t); !hasAll(rel, before) || len(rel) != 5 {
		t.Errorf("activate of a hotfix release cleaned up: releases %v", rel)
	}
}

// TestHotfixInterruptedThenResumed interrupts a hotfix deploy (Ctrl-C)
// while a prepare hook runs, before the hooks marked hotfix: skip come up:
// a plain `drover resume` finishes it, and they never run, nor does
// cleanup.
func TestHotfixInterruptedThenResumed(t *testing.T) {
	p := newPushApp(t)
	hooks := "  build: {when: prepare, timeout: 60s, commands: ['echo build >> $DROVER_SHARED_DIR/which', 'while [ ! -f $DROVER_SHARED_DIR/go ]; do sleep 0.05; done']}\n" +
		"  collect: {when: prepare, hotfix: skip, commands: ['echo collect >> $DROVER_SHARED_DIR/which']}\n" +
		"  migrate: {run_once: true, role: web, hotfix: skip, commands: ['echo migrate >> $DROVER_SHARED_DIR/which']}\n"
	p.repo.Commit("app", map[string]string{"drover.yml": p.yml("log", hooks, localHost)})
	goFile := filepath.Join(p.deployTo, "shared", "go")
	if err := os.MkdirAll(filepath.Dir(goFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 3 { // keep_releases: 3
		p.newCommit(i)
		if out, err := p.deploy(t, cli.DeployOptions{}); err != nil {
			t.Fatalf("deploy %d: %v\n%s", i, err, out)
		}
	}
	p.which()
	before := p.releases(t)
	if err := os.Remove(goFile); err != nil {
		t.Fatal(err)
	}

	p.newCommit(3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var log bytes.Buffer
	o := p.options(&log, "")
	o.Hotfix = true
	done := make(chan error, 1)
	go func() {
		_, err := cli.Deploy(ctx, o)
		done <- err
	}()
	which := filepath.Join(p.deployTo, "shared", "which")
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile(which); string(b) == "build\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the build hook did not start within 60s:\n%s", log.String())
		}
	}
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("the interrupted hotfix succeeded:\n%s", log.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the interrupted hotfix did not end within 60s")
	}
	if got := p.which(); got != "build\n" {
		t.Errorf("the interrupted hotfix ran %q, want build only", got)
	}

	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	log.Reset()
	if _, err := cli.Resume(context.Background(), p.options(&log, "")); err != nil {
		t.Fatalf("resume: %v\n%s", err, log.String())
	}
	if got := p.which(); got != "build\n" {
		t.Errorf("the resumed hotfix ran %q, want build only (collect and migrate say hotfix: skip)", got)
	}
	if !strings.Contains(log.String(), "as the hotfix it began as") || !strings.Contains(log.String(), "\nskipped for --hotfix: hook collect, hook migrate, cleanup\n") {
		t.Errorf("resume does not say it finishes a hotfix and what it skipped:\n%s", log.String())
	}
	if rel := p.releases(t); !hasAll(rel, before) || len(rel) != 4 {
		t.Errorf("the resumed hotfix cleaned up: releases %v, before %v", rel, before)
	}
	if !strings.Contains(p.current(), p.repo.Head()[:7]) {
		t.Errorf("resume did not activate the hotfix: current %s", p.current())
	}
}
