package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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
