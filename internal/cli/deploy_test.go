package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover/drover/internal/cli"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/testenv/gitrepo"
	"github.com/drover/drover/internal/transport"
)

// pushApp is a repository whose drover.yml deploys to this machine
// (transport: local) under a private deploy_to, with the deployer's caches
// and logs in the test's own directories.
type pushApp struct {
	repo     *gitrepo.Repo
	deployTo string
	bin      string
}

func newPushApp(t *testing.T) *pushApp {
	t.Helper()
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	p := &pushApp{repo: gitrepo.New(t), deployTo: filepath.Join(t.TempDir(), "srv"), bin: apptest.DroverBinary(t)}
	t.Cleanup(func() { apptest.StopPIDs(filepath.Join(p.deployTo, "shared", "pids")) })
	return p
}

// yml is a drover.yml for p whose hooks block and shared dirs are given;
// hosts are the environment test's hosts.
func (p *pushApp) yml(shared, hooks, hosts string) string {
	return fmt.Sprintf("app: shop\nrepo: %s\ndeploy_to: %s\nkeep_releases: 3\nshared:\n  dirs: [%s]\nhooks:\n%senvironments:\n  test:\n    branch: main\n    hosts:\n%s",
		p.repo.Dir, p.deployTo, shared, hooks, hosts)
}

const localHost = "      - {name: here, transport: local, roles: [web]}\n"

func (p *pushApp) deploy(t *testing.T, o cli.DeployOptions) (string, error) {
	t.Helper()
	var out bytes.Buffer
	o.File = filepath.Join(p.repo.Dir, "drover.yml")
	o.Env = "test"
	o.Transport = transport.Options{Binary: p.bin}
	o.IO = cli.IO{Out: &out, Err: &out}
	o.Lease = lock.DefaultLease
	_, err := cli.Deploy(context.Background(), &o)
	return out.String(), err
}

func (p *pushApp) current() string {
	target, _ := os.Readlink(filepath.Join(p.deployTo, "current"))
	return filepath.Base(target)
}

// TestPushRunsTheDeployedCommitsHooks: deploying tag:v1.0 from a checkout
// of main runs v1.0's hooks and links v1.0's shared paths, not main's; a
// commit whose drover.yml is missing or invalid deploys nothing and says
// which commit and where.
func TestPushRunsTheDeployedCommitsHooks(t *testing.T) {
	p := newPushApp(t)
	hook := func(word string) string {
		return "  prepare: ['echo " + word + " >> $DROVER_SHARED_DIR/which']\n" +
			"  after_activate: ['echo " + word + "-after >> $DROVER_SHARED_DIR/which']\n"
	}
	which := func() string {
		b, _ := os.ReadFile(filepath.Join(p.deployTo, "shared", "which"))
		os.Remove(filepath.Join(p.deployTo, "shared", "which"))
		return string(b)
	}
	p.repo.Commit("v1", map[string]string{"drover.yml": p.yml("v1data", hook("v1"), localHost)})
	p.repo.Git("tag", "v1.0")
	p.repo.Commit("no config", map[string]string{"drover.yml": "\x00delete"})
	p.repo.Git("tag", "noconfig")
	p.repo.Commit("bad config", map[string]string{"drover.yml": p.yml("v1data", hook("bad")+"  colour: [blue]\n", localHost)})
	p.repo.Git("tag", "badconfig")
	p.repo.Commit("v2", map[string]string{"drover.yml": p.yml("v1data", hook("v2"), localHost)})
	p.repo.Git("tag", "v2.0")
	main := p.repo.Commit("main", map[string]string{"drover.yml": p.yml("maindata", hook("main"), localHost)})

	out, err := p.deploy(t, cli.DeployOptions{Version: "tag:v1.0"})
	if err != nil {
		t.Fatalf("deploy tag:v1.0: %v\n%s", err, out)
	}
	if got := which(); got != "v1\nv1-after\n" {
		t.Errorf("deploying tag:v1.0 from main's checkout ran hooks that wrote %q, want v1's only", got)
	}
	rel := filepath.Join(p.deployTo, "current")
	if _, err := os.Lstat(filepath.Join(rel, "v1data")); err != nil {
		t.Errorf("v1.0's shared dir v1data is not linked: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(rel, "maindata")); err == nil {
		t.Error("main's shared dir maindata is linked into v1.0's release")
	}
	good := p.current()

	for _, tc := range []struct{ tag, want string }{
		{"noconfig", "has no drover.yml"},
		{"badconfig", `hook "colour" has no stage`},
	} {
		sha := p.repo.Git("rev-parse", tc.tag)
		out, err := p.deploy(t, cli.DeployOptions{Version: "tag:" + tc.tag})
		if err == nil {
			t.Fatalf("deploy tag:%s succeeded:\n%s", tc.tag, out)
		}
		if cli.ExitCode(err) != cli.ExitUsage {
			t.Errorf("deploy tag:%s: exit code %d, want %d (%v)", tc.tag, cli.ExitCode(err), cli.ExitUsage, err)
		}
		msg := err.Error()
		if !strings.Contains(msg, "drover.yml@"+sha[:12]) || !strings.Contains(msg, tc.want) || !strings.Contains(msg, "nothing was deployed") {
			t.Errorf("deploy tag:%s: error %q does not name drover.yml@%s, say %q and that nothing was deployed", tc.tag, msg, sha[:12], tc.want)
		}
		if tc.tag == "badconfig" && !strings.Contains(msg, "drover.yml@"+sha[:12]+":") {
			t.Errorf("deploy tag:%s: error %q has no line", tc.tag, msg)
		}
		if p.current() != good {
			t.Errorf("deploy tag:%s switched current to %s", tc.tag, p.current())
		}
	}
	if got := which(); got != "" {
		t.Errorf("a refused deploy ran hooks: %q", got)
	}

	// And the default, the tip of main, runs main's hooks.
	if out, err := p.deploy(t, cli.DeployOptions{}); err != nil {
		t.Fatalf("deploy main: %v\n%s", err, out)
	}
	if got := which(); got != "main\nmain-after\n" {
		t.Errorf("deploying main ran hooks that wrote %q", got)
	}
	if !strings.Contains(p.current(), main[:7]) {
		t.Errorf("current %s is not main's commit %s", p.current(), main)
	}
	mainRelease := p.current()

	// drover prepare then drover activate: each phase runs v2.0's hooks.
	var log bytes.Buffer
	o := &cli.DeployOptions{Version: "tag:v2.0", Lease: lock.DefaultLease,
		Common: cli.Common{File: filepath.Join(p.repo.Dir, "drover.yml"), Env: "test", Transport: transport.Options{Binary: p.bin}, IO: cli.IO{Out: &log, Err: &log}}}
	rep, err := cli.Prepare(context.Background(), o)
	if err != nil {
		t.Fatalf("prepare tag:v2.0: %v\n%s", err, log.String())
	}
	if got := which(); got != "v2\n" {
		t.Errorf("prepare tag:v2.0 ran hooks that wrote %q", got)
	}
	o.Version, o.Release = "", rep.Release
	if _, err := cli.Activate(context.Background(), o); err != nil {
		t.Fatalf("activate %s: %v\n%s", rep.Release, err, log.String())
	}
	if got := which(); got != "v2-after\n" {
		t.Errorf("activate of v2.0's release ran hooks that wrote %q", got)
	}

	// Rolling back to main's release, while the checkout has moved on,
	// activates it with its own commit's hooks.
	p.repo.Commit("main2", map[string]string{"drover.yml": p.yml("maindata", hook("main2"), localHost)})
	ro := &cli.RollbackOptions{To: mainRelease, Lease: lock.DefaultLease, Common: o.Common}
	if _, err := cli.Rollback(context.Background(), ro); err != nil {
		t.Fatalf("rollback --to %s: %v\n%s", mainRelease, err, log.String())
	}
	if got := which(); got != "main-after\n" {
		t.Errorf("rollback to main's release ran hooks that wrote %q", got)
	}
}

// TestRunOnceWithoutHostIsUsageError: `drover deploy --role web` when the
// migrate hook wants a db host exits 2 naming the hook and the role, and
// touches nothing; with --skip migrate it deploys and the summary says the
// hook was skipped.
func TestRunOnceWithoutHostIsUsageError(t *testing.T) {
	p := newPushApp(t)
	hooks := "  migrate: {run_once: true, role: db, commands: ['echo migrated >> $DROVER_SHARED_DIR/which']}\n"
	// db1 is never reached: --role web leaves it out.
	hosts := localHost + "      - {name: db1, host: 192.0.2.1, roles: [db]}\n"
	p.repo.Commit("app", map[string]string{"drover.yml": p.yml("log", hooks, hosts)})

	out, err := p.deploy(t, cli.DeployOptions{Common: cli.Common{Role: "web"}})
	if err == nil {
		t.Fatalf("deploy --role web with a run_once hook for db succeeded:\n%s", out)
	}
	if cli.ExitCode(err) != cli.ExitUsage || !strings.Contains(err.Error(), `"migrate"`) || !strings.Contains(err.Error(), `role "db"`) {
		t.Errorf("exit code %d, error %q: want %d naming hook migrate and role db", cli.ExitCode(err), err, cli.ExitUsage)
	}
	if p.current() != "." && p.current() != "" {
		t.Errorf("refused deploy activated %s", p.current())
	}

	out, err = p.deploy(t, cli.DeployOptions{Common: cli.Common{Role: "web"}, Skip: []string{"migrate"}})
	if err != nil {
		t.Fatalf("deploy --role web --skip migrate: %v\n%s", err, out)
	}
	if !strings.Contains(out, "skipped run_once hook migrate") {
		t.Errorf("summary does not name the skipped hook:\n%s", out)
	}
	if which, _ := os.ReadFile(filepath.Join(p.deployTo, "shared", "which")); len(which) > 0 {
		t.Errorf("the skipped hook ran: %q", which)
	}
}
