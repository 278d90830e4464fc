package cli_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/cli"
)

// TestPushCanaryGate deploys with strategy canary to a host on this
// machine: a gate command that fails rolls the canary back to the release
// it ran; one that keeps passing for canary.wait leaves the new release.
func TestPushCanaryGate(t *testing.T) {
	p := newPushApp(t)
	pass := filepath.Join(t.TempDir(), "pass")
	strategy := "    strategy: {type: canary, canary: {wait: 1s, command: 'test -f " + pass + "'}}\n"
	yml := func(word string) string {
		hooks := "  prepare: ['echo " + word + "']\n"
		return strings.Replace(p.yml("log", hooks, localHost), "    branch: main\n", "    branch: main\n"+strategy, 1)
	}
	p.repo.Commit("v1", map[string]string{"drover.yml": yml("v1")})
	os.WriteFile(pass, nil, 0o644)
	if out, err := p.deploy(t, cli.DeployOptions{}); err != nil {
		t.Fatalf("first deploy: %v\n%s", err, out)
	}
	first := p.current()

	os.Remove(pass)
	p.repo.Commit("v2", map[string]string{"drover.yml": yml("v2")})
	out, err := p.deploy(t, cli.DeployOptions{})
	if err == nil || !strings.Contains(out, "canary aborted: the canary check failed") || !strings.Contains(out, "switched back here → "+first) {
		t.Fatalf("deploy with a failing canary check: %v\n%s", err, out)
	}
	if p.current() != first {
		t.Errorf("current is %s after the abort, want %s", p.current(), first)
	}

	os.WriteFile(pass, nil, 0o644)
	p.repo.Commit("v3", map[string]string{"drover.yml": yml("v3")})
	out, err = p.deploy(t, cli.DeployOptions{})
	if err != nil || !strings.Contains(out, "canary on here promoted") {
		t.Fatalf("deploy with a passing canary check: %v\n%s", err, out)
	}
	if p.current() == first {
		t.Errorf("current still %s after a promoted canary", first)
	}
}

// drover runs the real binary with args in p's repository, bounded.
func (p *pushApp) drover(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.bin, append(args, "-f", filepath.Join(p.repo.Dir, "drover.yml"))...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("drover %v: %v", args, err)
	}
	return string(out), code
}

// startDeploy runs `drover deploy test` in the background; wait returns
// its output and exit code. The process is killed if the test ends first.
func (p *pushApp) startDeploy(t *testing.T) (wait func() (string, int)) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(p.bin, "deploy", "test", "-f", filepath.Join(p.repo.Dir, "drover.yml"))
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	return func() (string, int) {
		select {
		case <-done:
		case <-time.After(2 * time.Minute):
			t.Fatalf("drover deploy did not end:\n%s", out.String())
		}
		return out.String(), cmd.ProcessState.ExitCode()
	}
}

// waitPaused polls `drover releases test` until it shows the paused
// canary, and returns that line.
func (p *pushApp) waitPaused(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out, _ := p.drover(t, "releases", "test")
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "canary of ") {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the canary never paused:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond) // polls a condition, bounded by deadline
	}
}

// TestPushCanaryPromoteAbort: with no canary check, `drover deploy` pauses
// after the canary and says so (in `drover releases` and to a deployer
// blocked by its lock) until `drover promote` (the new release stays) or
// `drover abort` (the canary goes back, the deploy fails naming who
// aborted), each run by the real binary as another process would.
func TestPushCanaryPromoteAbort(t *testing.T) {
	p := newPushApp(t)
	yml := func(word, strategy string) string {
		hooks := "  prepare: ['echo " + word + "']\n"
		return strings.Replace(p.yml("log", hooks, localHost), "    branch: main\n", "    branch: main\n"+strategy, 1)
	}
	p.repo.Commit("v1", map[string]string{"drover.yml": yml("v1", "")})
	if out, err := p.deploy(t, cli.DeployOptions{}); err != nil {
		t.Fatalf("first deploy: %v\n%s", err, out)
	}
	first := p.current()
	if out, code := p.drover(t, "promote", "test"); code != 2 || !strings.Contains(out, "no canary of test is paused") {
		t.Fatalf("promote with no canary paused: exit %d\n%s", code, out)
	}

	canary := "    strategy: {type: canary}\n"
	p.repo.Commit("v2", map[string]string{"drover.yml": yml("v2", canary)})
	wait := p.startDeploy(t)
	line := p.waitPaused(t)
	if !strings.Contains(line, "paused on here since") || !strings.Contains(line, "drover promote test or drover abort test") {
		t.Errorf("releases says %q", line)
	}
	if out, code := p.drover(t, "deploy", "test"); code == 0 || !strings.Contains(out, "deploy lock held by") || !strings.Contains(out, "canary of ") {
		t.Errorf("a second deploy while the canary is paused: exit %d\n%s", code, out)
	}
	if out, code := p.drover(t, "promote", "test"); code != 0 || !strings.Contains(out, "promote by ") {
		t.Fatalf("promote: exit %d\n%s", code, out)
	}
	out, code := wait()
	if code != 0 || !strings.Contains(out, "promoted by ") || !strings.Contains(out, "paused on here; drover promote test or drover abort test") {
		t.Fatalf("deploy after promote: exit %d\n%s", code, out)
	}
	second := p.current()
	if second == first {
		t.Errorf("current still %s after promote", first)
	}
	if _, err := os.Stat(filepath.Join(p.deployTo, ".drover", "canary.json")); !os.IsNotExist(err) {
		t.Errorf("canary.json left after the rollout: %v", err)
	}

	p.repo.Commit("v3", map[string]string{"drover.yml": yml("v3", canary)})
	wait = p.startDeploy(t)
	p.waitPaused(t)
	if out, code := p.drover(t, "abort", "test"); code != 0 || !strings.Contains(out, "abort by ") {
		t.Fatalf("abort: exit %d\n%s", code, out)
	}
	out, code = wait()
	if code == 0 || !strings.Contains(out, "canary aborted by ") {
		t.Fatalf("deploy after abort: exit %d\n%s", code, out)
	}
	if p.current() != second {
		t.Errorf("current is %s after abort, want %s", p.current(), second)
	}
	if out, code := p.drover(t, "abort", "test"); code != 2 {
		t.Errorf("abort after the rollout ended: exit %d\n%s", code, out)
	}
}
