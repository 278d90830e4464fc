package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover/drover/internal/cli"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/transport"
)

// relcfgHooks are hooks that write word to $DROVER_SHARED_DIR/which.
func relcfgHooks(word string) string {
	return "  after_activate: ['echo " + word + " >> $DROVER_SHARED_DIR/which']\n"
}

// common returns the options of a verb run with the deployer's file.
func (p *pushApp) common(file string, log *bytes.Buffer) cli.Common {
	return cli.Common{File: file, Env: "test", Transport: transport.Options{Binary: p.bin}, IO: cli.IO{Out: log, Err: log}}
}

// activate runs `drover activate` of release id with o.
func activate(t *testing.T, o *cli.DeployOptions, id string, log *bytes.Buffer) {
	t.Helper()
	o.Release = id
	if _, err := cli.Activate(context.Background(), o); err != nil {
		t.Fatalf("activate %s: %v\n%s", id, err, log.String())
	}
}

// TestRollbackToCommitWithRefusedEnvironments: a commit whose drover.yml
// has an environments key today's drover refuses (deployed by an older
// drover) can be deployed, rolled back to and activated: push mode takes
// only hooks, services, shared and keep_releases from a commit.
func TestRollbackToCommitWithRefusedEnvironments(t *testing.T) {
	p := newPushApp(t)
	deployer := filepath.Join(t.TempDir(), "drover.yml")
	if err := os.WriteFile(deployer, []byte(p.yml("data", relcfgHooks("deployer"), localHost)), 0o644); err != nil {
		t.Fatal(err)
	}
	old := strings.Replace(p.yml("data", relcfgHooks("v1"), localHost), "    branch: main\n", "    branch: main\n    strategy: {type: rolling, batch: 1, max_unavailable: 1}\n", 1)
	p.repo.Commit("v1", map[string]string{"drover.yml": old})
	var log bytes.Buffer
	o := &cli.DeployOptions{Lease: lock.DefaultLease, Common: p.common(deployer, &log)}
	if _, err := cli.Deploy(context.Background(), o); err != nil {
		t.Fatalf("deploy v1: %v\n%s", err, log.String())
	}
	r1 := p.current()
	p.repo.Commit("v2", map[string]string{"drover.yml": p.yml("data", relcfgHooks("v2"), localHost)})
	if _, err := cli.Deploy(context.Background(), o); err != nil {
		t.Fatalf("deploy v2: %v\n%s", err, log.String())
	}
	r2 := p.current()
	if got := p.which(); got != "v1\nv2\n" {
		t.Errorf("deploys ran hooks that wrote %q, want v1 then v2", got)
	}
	ro := &cli.RollbackOptions{Lease: lock.DefaultLease, Common: p.common(deployer, &log)}
	if _, err := cli.Rollback(context.Background(), ro); err != nil {
		t.Fatalf("rollback to %s: %v\n%s", r1, err, log.String())
	}
	if p.current() != r1 || p.which() != "v1\n" {
		t.Fatalf("after rollback current = %s, want %s with v1's hook", p.current(), r1)
	}
	activate(t, o, r2, &log)
	activate(t, o, r1, &log)
	if p.current() != r1 {
		t.Fatalf("current = %s, want %s", p.current(), r1)
	}
}

// TestRollbackAfterStateLoss: after the state file is lost (the documented
// recovery rebuilds it from the release dirs, without commits), rollback
// and activate of a rebuilt release work, with the release's own hooks
// read from its directory.
func TestRollbackAfterStateLoss(t *testing.T) {
	p := newPushApp(t)
	file := filepath.Join(p.repo.Dir, "drover.yml")
	var log bytes.Buffer
	o := &cli.DeployOptions{Lease: lock.DefaultLease, Common: p.common(file, &log)}
	var ids []string
	for _, v := range []string{"v1", "v2"} {
		p.repo.Commit(v, map[string]string{"drover.yml": p.yml("data", relcfgHooks(v), localHost)})
		if _, err := cli.Deploy(context.Background(), o); err != nil {
			t.Fatalf("deploy %s: %v\n%s", v, err, log.String())
		}
		ids = append(ids, p.current())
	}
	r1, r2 := ids[0], ids[1]
	state := filepath.Join(p.deployTo, ".drover", "releases.json")
	if err := os.Rename(state, state+".lost"); err != nil {
		t.Fatal(err)
	}
	p.repo.Commit("v3", map[string]string{"drover.yml": p.yml("data", relcfgHooks("v3"), localHost)})
	if _, err := cli.Deploy(context.Background(), o); err != nil {
		t.Fatalf("deploy v3: %v\n%s", err, log.String())
	}
	r3 := p.current()
	p.which()
	ro := &cli.RollbackOptions{Lease: lock.DefaultLease, Common: p.common(file, &log)}
	if _, err := cli.Rollback(context.Background(), ro); err != nil {
		t.Fatalf("rollback to the rebuilt %s: %v\n%s", r2, err, log.String())
	}
	if p.current() != r2 {
		t.Fatalf("after rollback current = %s, want %s", p.current(), r2)
	}
	if got := p.which(); got != "v2\n" {
		t.Errorf("rollback to %s ran hooks that wrote %q, want v2's", r2, got)
	}
	activate(t, o, r3, &log)
	activate(t, o, r2, &log)
	if p.current() != r2 {
		t.Fatalf("current = %s, want %s", p.current(), r2)
	}
	// r1 is unknown (its directory is all the host has): the operator
	// may still name it, and it runs its own hooks.
	p.which()
	activate(t, o, r1, &log)
	if p.current() != r1 || p.which() != "v1\n" {
		t.Fatalf("after activate of the unknown %s: current = %s", r1, p.current())
	}
}
