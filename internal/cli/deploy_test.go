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
