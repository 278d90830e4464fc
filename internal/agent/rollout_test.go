package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/testenv/gitrepo"
	"github.com/drover/drover/internal/testenv/servertest"
)

// taskYAML is the app's drover.yml: a run_once migration and a hook run
// everywhere in prepare, a run_once seed for role db before activation
// that fails while shared/fail-seed exists, and, when %s is not empty,
// services. Each hook appends the release to a file in shared/.
const taskYAML = `app: shop
repo: /nonexistent/overridden-by-the-agent
deploy_to: /nonexistent/overridden-by-the-agent
keep_releases: 5
hooks:
  migrate:
    when: prepare
    run_once: true
    commands: ['echo "$DROVER_RELEASE" >> "$DROVER_SHARED_DIR/migrated"']
  warm:
    when: prepare
    commands: ['echo "$DROVER_RELEASE" >> "$DROVER_SHARED_DIR/warmed"']
  seed:
    when: before_activate
    run_once: true
    role: db
    commands: ['echo "$DROVER_RELEASE" >> "$DROVER_SHARED_DIR/seeded"; test ! -f "$DROVER_SHARED_DIR/fail-seed"']
%s
environments:
  production:
    branch: main
    hosts:
      - {transport: local, roles: [web, db]}
`

// call is one request the agent made to the server, as the proxy saw it.
type call struct {
	path string
	body []byte
	at   time.Time
}

// taskFixture is a real control server (behind a proxy that records what
// the agent sends), a real repository and one node's agent configuration.
type taskFixture struct {
	t     *testing.T
	ctx   context.Context
	srv   *servertest.Server
	admin *api.Client
	repo  *gitrepo.Repo
	cfg   *config.Agent
	url   string

	mu    sync.Mutex
	calls []call
}

func newTaskFixture(t *testing.T) *taskFixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	f := &taskFixture{t: t, ctx: ctx, srv: servertest.Start(t, servertest.Options{})}
	var err error
	if f.admin, err = api.NewClient(f.srv.URL, f.srv.Admin, ""); err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse(f.srv.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	rec := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/upgrades") {
			b, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(b))
			f.mu.Lock()
			f.calls = append(f.calls, call{r.URL.Path, b, time.Now()})
			f.mu.Unlock()
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(rec.Close)
	f.url = rec.URL

	f.repo = gitrepo.New(t)
	f.repo.Commit("v1", map[string]string{"drover.yml": fmt.Sprintf(taskYAML, ""), "VERSION": "1\n"})
	jt, err := f.admin.CreateJoinToken(ctx, api.CreateJoinToken{TTL: "1h", Apps: []string{"shop"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f.cfg = &config.Agent{Path: filepath.Join(dir, "agent.yml"), Server: f.url, JoinToken: jt.Token, StateDir: filepath.Join(dir, "state"), Node: "web1",
		Apps: []config.AgentApp{{App: "shop", Env: "production", Repo: f.repo.Dir, DeployTo: filepath.Join(dir, "srv"), Roles: []string{"web", "db"}}}}
	t.Cleanup(func() { apptest.StopPIDs(f.shared("pids")) })
	return f
}

// agent is a new agent process for the node, as after a restart: it knows
// only what state_dir holds.
func (f *taskFixture) agent() *Agent {
	f.t.Helper()
	a := &Agent{Config: f.cfg, Wait: time.Second, ReportWait: 10 * time.Second, Heartbeat: 200 * time.Millisecond}
	if err := a.connect(f.ctx); err != nil {
		f.t.Fatal(err)
	}
	return a
}

func (f *taskFixture) shared(name string) string {
	return filepath.Join(f.cfg.Apps[0].DeployTo, "shared", name)
}

// lines is the lines of shared/name.
func (f *taskFixture) lines(name string) []string {
	b, err := os.ReadFile(f.shared(name))
	if err != nil {
		return nil
	}
	return strings.Fields(string(b))
}

// release records a release of the repository's HEAD.
func (f *taskFixture) release() (*api.Release, string) {
	f.t.Helper()
	rel, err := f.admin.CreateRelease(f.ctx, api.CreateRelease{App: "shop", Env: "production", Spec: "branch:main", Commit: f.repo.Head()})
	if err != nil {
		f.t.Fatal(err)
	}
	return &rel.Release, release.NewID(rel.CreatedAt, rel.Commit)
}

// apply hands the agent one desired state for the node's app.
func (f *taskFixture) apply(a *Agent, want api.DesiredApp) Result {
	want.App, want.Env = "shop", "production"
	return a.apply(f.ctx, &api.Desired{Version: 1, Apps: []api.DesiredApp{want}})
}

func (f *taskFixture) active() string {
	id, err := release.Layout{Root: f.cfg.Apps[0].DeployTo}.ActiveID()
	if err != nil {
		f.t.Fatal(err)
	}
	return id
}

// upgrades returns what the agent sent since the last call: the
// StartUpgrade bodies, the final reports, and the longest time between
// two of its calls.
func (f *taskFixture) upgrades() (starts []api.StartUpgrade, finals []api.Report, gap time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, c := range f.calls {
		if i > 0 {
			gap = max(gap, c.at.Sub(f.calls[i-1].at))
		}
		if strings.HasSuffix(c.path, "/upgrades") {
			var s api.StartUpgrade
			if err := json.Unmarshal(c.body, &s); err != nil {
				f.t.Fatal(err)
			}
			starts = append(starts, s)
			continue
		}
		var r api.Report
		if err := json.Unmarshal(c.body, &r); err != nil {
			f.t.Fatal(err)
		}
		if r.Status == api.StatusSucceeded || r.Status == api.StatusFailed {
			finals = append(finals, r)
		}
	}
	f.calls = nil
	return starts, finals, gap
}

// expect checks that the agent started exactly one upgrade for rollout
// task (ro, task) and that its final report says status, serving.
func (f *taskFixture) expect(what string, ro, task int64, status, serving string) api.Report {
	f.t.Helper()
	starts, finals, _ := f.upgrades()
	if len(starts) != 1 || starts[0].Rollout != ro || starts[0].Task != task {
		f.t.Fatalf("%s: StartUpgrade calls %+v, want one for rollout %d task %d", what, starts, ro, task)
	}
	if len(finals) != 1 || finals[0].Status != status || finals[0].Serving != serving {
		f.t.Fatalf("%s: final reports %+v, want one %s serving %q", what, finals, status, serving)
	}
	return finals[0]
}

// TestRolloutTasks: inside a rollout the agent does exactly the task it
// is given: prepare runs the prepare stage's run_once hooks it is asked
// (RunOnceAll: those of its roles) and activates nothing; activate runs no
// run_once hook; hooks runs the named run_once hook of the stage; rollback
// switches back. Every task starts an upgrade naming the rollout and task,
// and the final report says which release the node serves.
func TestRolloutTasks(t *testing.T) {
	f := newTaskFixture(t)
	a := f.agent()
	rel1, id1 := f.release()

	task := func(n int64, action string, rel *api.Release, mod func(*api.DesiredApp)) {
		t.Helper()
		want := api.DesiredApp{Release: rel, Action: action, Token: 3, Rollout: 7, Task: n}
		if mod != nil {
			mod(&want)
		}
		if res := f.apply(a, want); res.Failed != 0 || res.Upgraded != 1 {
			t.Fatalf("task %d (%s): %+v", n, action, res)
		}
	}
	task(1, api.ActionPrepare, rel1, func(d *api.DesiredApp) { d.RunOnce = []string{api.RunOnceAll} })
	if got := f.lines("migrated"); len(got) != 1 || got[0] != id1 {
		t.Fatalf("prepare with run_once *: migrated %v, want [%s]", got, id1)
	}
	if got := f.lines("warmed"); len(got) != 1 {
		t.Fatalf("prepare: warmed %v, want once", got)
	}
	if f.active() != "" {
		t.Fatalf("prepare activated %s", f.active())
	}
	f.expect("prepare", 7, 1, api.StatusSucceeded, "")

	task(2, api.ActionHooks, rel1, func(d *api.DesiredApp) {
		d.Stage, d.RunOnce = config.StageBeforeActivate, []string{"seed"}
	})
	if got := f.lines("seeded"); len(got) != 1 {
		t.Fatalf("hooks seed: seeded %v, want once", got)
	}
	f.expect("hooks", 7, 2, api.StatusSucceeded, "")

	task(3, api.ActionActivate, rel1, nil)
	if f.active() != id1 {
		t.Fatalf("activate: current is %q, want %s", f.active(), id1)
	}
	if len(f.lines("migrated")) != 1 || len(f.lines("seeded")) != 1 {
		t.Fatalf("activate ran a run_once hook: migrated %v seeded %v", f.lines("migrated"), f.lines("seeded"))
	}
	f.expect("activate", 7, 3, api.StatusSucceeded, id1)

	// A second release, activated without a prepare task first: it is
	// prepared with no run_once hook, then rolled back.
	f.repo.Commit("v2", map[string]string{"VERSION": "2\n"})
	rel2, id2 := f.release()
	task(4, api.ActionActivate, rel2, nil)
	if f.active() != id2 || len(f.lines("migrated")) != 1 || len(f.lines("warmed")) != 2 {
		t.Fatalf("activate unprepared: current %s (want %s), migrated %v, warmed %v", f.active(), id2, f.lines("migrated"), f.lines("warmed"))
	}
	f.expect("activate unprepared", 7, 4, api.StatusSucceeded, id2)
	task(5, api.ActionRollback, rel2, func(d *api.DesiredApp) { d.To = id1 })
	if f.active() != id1 {
		t.Fatalf("rollback: current %s, want %s", f.active(), id1)
	}
	f.expect("rollback", 7, 5, api.StatusSucceeded, id1)

	// The same task again, in this process: nothing runs, nothing is sent.
	task5 := api.DesiredApp{Release: rel2, Action: api.ActionRollback, To: id1, Token: 3, Rollout: 7, Task: 5}
	if res := f.apply(a, task5); res != (Result{}) {
		t.Fatalf("task 5 again: %+v, want nothing done", res)
	}
	if starts, finals, _ := f.upgrades(); len(starts)+len(finals) != 0 {
		t.Fatalf("task 5 again was reported again by the same process: %+v %+v", starts, finals)
	}
}

// TestRolloutActivateFailedServesPrevious: an activation whose health
// check fails switches itself back; the final report is failed and says
// the node serves the release it ran before.
func TestRolloutActivateFailedServesPrevious(t *testing.T) {
	f := newTaskFixture(t)
	a := f.agent()
	rel1, id1 := f.release()
	f.apply(a, api.DesiredApp{Release: rel1, Action: api.ActionActivate, Token: 1, Rollout: 1, Task: 1})
	f.expect("activate 1", 1, 1, api.StatusSucceeded, id1)

	f.repo.Commit("v2", map[string]string{"drover.yml": fmt.Sprintf(taskYAML,
		"services:\n  web:\n    start: exec sleep 300\n    health: {command: 'false', timeout: 1s, interval: 100ms}\n    stop_grace: 1s\n")})
	rel2, id2 := f.release()
	if res := f.apply(a, api.DesiredApp{Release: rel2, Action: api.ActionActivate, Token: 2, Rollout: 2, Task: 1}); res.Failed != 1 {
		t.Fatalf("activate of an unhealthy release: %+v, want failed", res)
	}
	if f.active() != id1 {
		t.Fatalf("after the failed activation of %s current is %s, want %s", id2, f.active(), id1)
	}
	rep := f.expect("failed activate", 2, 1, api.StatusFailed, id1)
	if rep.Error == "" {
		t.Fatal("the failed activation's report has no error")
	}
}

// TestRolloutHeartbeat: while a task runs with no step changing, the agent
// reports at every heartbeat period.
func TestRolloutHeartbeat(t *testing.T) {
	f := newTaskFixture(t)
	f.repo.Commit("slow", map[string]string{"drover.yml": strings.Replace(fmt.Sprintf(taskYAML, ""),
		`commands: ['echo "$DROVER_RELEASE" >> "$DROVER_SHARED_DIR/warmed"']`, `commands: ['sleep 1.5']`, 1)})
	a := f.agent()
	rel, _ := f.release()
	f.apply(a, api.DesiredApp{Release: rel, Action: api.ActionPrepare, Token: 1, Rollout: 1, Task: 1})
	_, finals, gap := f.upgrades()
	if len(finals) != 1 || finals[0].Status != api.StatusSucceeded {
		t.Fatalf("final reports %+v", finals)
	}
	// A 1.5 s hook at a 200 ms heartbeat: no silence near the hook's length.
	if gap > time.Second {
		t.Fatalf("the agent sent nothing for %s during a 1.5 s hook (heartbeat 200 ms)", gap)
	}
}

// TestNoRunOnceOutsideRollout: a node converging to the environment's
// release outside a rollout (a node that joined or came back) runs no
// run_once hook: the migration ran in the rollout that made it current.
func TestNoRunOnceOutsideRollout(t *testing.T) {
	f := newTaskFixture(t)
	a := f.agent()
	rel, id := f.release()
	if res := f.apply(a, api.DesiredApp{Release: rel, Action: api.ActionActivate}); res.Upgraded != 1 || res.Failed != 0 {
		t.Fatalf("converge: %+v", res)
	}
	if f.active() != id {
		t.Fatalf("current %s, want %s", f.active(), id)
	}
	if got := append(f.lines("migrated"), f.lines("seeded")...); len(got) != 0 {
		t.Fatalf("run_once hooks ran outside a rollout: %v", got)
	}
	if len(f.lines("warmed")) != 1 {
		t.Fatalf("the prepare hook for every node did not run: %v", f.lines("warmed"))
	}
	starts, finals, _ := f.upgrades()
	if len(starts) != 1 || starts[0].Rollout != 0 || len(finals) != 1 || finals[0].Serving != id {
		t.Fatalf("converge reported %+v %+v, want one upgrade serving %s", starts, finals, id)
	}
}

// TestFencingToken: a desired state whose token is lower than one the node
// acted on is refused, also by the agent after a restart, and so is one
// without a token once a token was seen; a higher one is acted on. The
// highest token is kept in a file only root reads.
func TestFencingToken(t *testing.T) {
	f := newTaskFixture(t)
	a := f.agent()
	rel1, id1 := f.release()
	// An old server sends no token: accepted while none was seen.
	f.apply(a, api.DesiredApp{Release: rel1, Action: api.ActionActivate})
	if f.active() != id1 {
		t.Fatalf("token 0 with none seen: current %q, want %s", f.active(), id1)
	}
	f.upgrades()
	f.repo.Commit("v2", map[string]string{"VERSION": "2\n"})
	rel2, id2 := f.release()
	f.apply(a, api.DesiredApp{Release: rel2, Action: api.ActionPrepare, Token: 5, Rollout: 3, Task: 1})
	f.expect("token 5", 3, 1, api.StatusSucceeded, id1)
	fi, err := os.Stat(filepath.Join(f.cfg.StateDir, "rollouts.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v, mode %v; want 0600", err, fi)
	}

	b := f.agent() // a restart
	for _, want := range []api.DesiredApp{
		{Release: rel2, Action: api.ActionActivate, Token: 4, Rollout: 2, Task: 9},
		{Release: rel2, Action: api.ActionActivate},
	} {
		if res := f.apply(b, want); res != (Result{}) {
			t.Fatalf("token %d after token 5: %+v, want refused", want.Token, res)
		}
		if f.active() != id1 {
			t.Fatalf("token %d after token 5 was acted on: current %s", want.Token, f.active())
		}
		if starts, _, _ := f.upgrades(); len(starts) != 0 {
			t.Fatalf("token %d after token 5: upgrade started %+v", want.Token, starts)
		}
	}
	f.apply(b, api.DesiredApp{Release: rel2, Action: api.ActionActivate, Token: 6, Rollout: 4, Task: 1})
	if f.active() != id2 {
		t.Fatalf("token 6: current %s, want %s", f.active(), id2)
	}
	f.expect("token 6", 4, 1, api.StatusSucceeded, id2)
}

// TestFinishedTaskNotRedoneAfterRestart: a task that ended (here a seed
// hook that failed) is not done again by the agent after a restart when
// the server asks it again: its recorded outcome is reported again. A new
// task of the same work runs it.
func TestFinishedTaskNotRedoneAfterRestart(t *testing.T) {
	f := newTaskFixture(t)
	rel, _ := f.release()
	if err := os.MkdirAll(filepath.Dir(f.shared("fail-seed")), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.shared("fail-seed"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	seed := api.DesiredApp{Release: rel, Action: api.ActionHooks, Stage: config.StageBeforeActivate, RunOnce: []string{"seed"}, Token: 2, Rollout: 5, Task: 2}
	if res := f.apply(f.agent(), seed); res.Failed != 1 {
		t.Fatalf("seed with fail-seed: %+v, want failed", res)
	}
	first := f.expect("seed", 5, 2, api.StatusFailed, "")
	if len(f.lines("seeded")) != 1 {
		t.Fatalf("seeded %v, want once", f.lines("seeded"))
	}

	a := f.agent() // a restart
	if res := f.apply(a, seed); res != (Result{}) {
		t.Fatalf("the finished task again after a restart: %+v, want nothing run", res)
	}
	if got := f.lines("seeded"); len(got) != 1 {
		t.Fatalf("the seed hook ran again after a restart: seeded %v", got)
	}
	again := f.expect("seed reported again", 5, 2, api.StatusFailed, "")
	if again.Error != first.Error {
		t.Fatalf("reported again with error %q, want the recorded %q", again.Error, first.Error)
	}
	// Asked again in the same process: no news, nothing sent.
	f.apply(a, seed)
	if starts, finals, _ := f.upgrades(); len(starts)+len(finals) != 0 {
		t.Fatalf("reported a third time: %+v %+v", starts, finals)
	}

	// The rollout asks again under a new task: the hook runs.
	if err := os.Remove(f.shared("fail-seed")); err != nil {
		t.Fatal(err)
	}
	seed.Task = 3
	if res := f.apply(a, seed); res.Upgraded != 1 {
		t.Fatalf("new task: %+v", res)
	}
	if got := f.lines("seeded"); len(got) != 2 {
		t.Fatalf("new task: seeded %v, want twice", got)
	}
	f.expect("new task", 5, 3, api.StatusSucceeded, "")
}

// helperEnv carries, to the agent process TestHelperAgentTask plays, its
// configuration and the task it does.
const helperEnv = "DROVER_AGENT_TEST_TASK"

type helperTask struct {
	Config *config.Agent
	Want   api.DesiredApp
}

// TestHelperAgentTask is not a test: it is an agent process that does one
// task (see TestRolloutTaskKilledMidPrepare), started by a test that kills
// it.
func TestHelperAgentTask(t *testing.T) {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		t.Skip("an agent process for TestRolloutTaskKilledMidPrepare")
	}
	var h helperTask
	if err := json.Unmarshal([]byte(spec), &h); err != nil {
		t.Fatal(err)
	}
	a := &Agent{Config: h.Config}
	ctx := context.Background()
	if err := a.connect(ctx); err != nil {
		t.Fatal(err)
	}
	a.apply(ctx, &api.Desired{Version: 1, Apps: []api.DesiredApp{h.Want}})
}

// TestRolloutTaskKilledMidPrepare: an agent killed (SIGKILL) in the middle
// of a prepare task does not count it finished: the next agent does the
// task by the engine's resume, which runs the run_once migration that had
// finished before the kill no second time, and reports the task done.
func TestRolloutTaskKilledMidPrepare(t *testing.T) {
	f := newTaskFixture(t)
	gated := strings.Replace(fmt.Sprintf(taskYAML, ""),
		`commands: ['echo "$DROVER_RELEASE" >> "$DROVER_SHARED_DIR/warmed"']`,
		`commands: ['echo $$ > "$DROVER_SHARED_DIR/hook.pid"; touch "$DROVER_SHARED_DIR/at-gate"; i=0; while [ ! -f "$DROVER_SHARED_DIR/gate" ]; do i=$((i+1)); if [ $i -gt 1200 ]; then exit 1; fi; sleep 0.05; done; echo "$DROVER_RELEASE" >> "$DROVER_SHARED_DIR/warmed"']`, 1)
	f.repo.Commit("gated", map[string]string{"drover.yml": gated})
	f.agent() // joins: the node token is in state_dir
	rel, id := f.release()
	want := api.DesiredApp{App: "shop", Env: "production", Release: rel, Action: api.ActionPrepare, RunOnce: []string{api.RunOnceAll}, Token: 1, Rollout: 9, Task: 1}
	spec, err := json.Marshal(helperTask{Config: f.cfg, Want: want})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAgentTask$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(spec))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-exited })

	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(f.shared("at-gate")); err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatal("the agent process ended before the gated hook")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent never reached the gated hook")
		}
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited
	// The hook runs in its own process group: it dies with its agent here.
	if b, err := os.ReadFile(f.shared("hook.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
	if got := f.lines("migrated"); len(got) != 1 {
		t.Fatalf("before the kill: migrated %v, want once", got)
	}
	starts, finals, _ := f.upgrades()
	if len(starts) != 1 || len(finals) != 0 {
		t.Fatalf("the killed agent reported %+v %+v, want one start and no end", starts, finals)
	}

	if err := os.WriteFile(f.shared("gate"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if res := f.apply(f.agent(), want); res.Upgraded != 1 || res.Failed != 0 {
		t.Fatalf("the task after the restart: %+v, want done", res)
	}
	if got := f.lines("migrated"); len(got) != 1 {
		t.Fatalf("after the resume: migrated %v, want once", got)
	}
	if got := f.lines("warmed"); len(got) != 1 || got[0] != id {
		t.Fatalf("after the resume: warmed %v, want [%s]", got, id)
	}
	f.expect("resumed prepare", 9, 1, api.StatusSucceeded, "")
}

// TestConfigWithoutHosts: in pull mode drover.yml may list no hosts for the
// environment (its agents are the hosts) and name hook roles only agents
// declare: the agent still deploys it, running the hooks of its roles.
func TestConfigWithoutHosts(t *testing.T) {
	f := newTaskFixture(t)
	yml := strings.Replace(fmt.Sprintf(taskYAML, ""), "    hosts:\n      - {transport: local, roles: [web, db]}\n", "", 1)
	f.repo.Commit("no hosts", map[string]string{"drover.yml": yml})
	a := f.agent()
	rel, id := f.release()
	if res := f.apply(a, api.DesiredApp{Release: rel, Action: api.ActionPrepare, RunOnce: []string{api.RunOnceAll}, Token: 1, Rollout: 1, Task: 1}); res.Failed != 0 {
		_, finals, _ := f.upgrades()
		t.Fatalf("prepare of a drover.yml without hosts: %+v %+v", res, finals)
	}
	if got := f.lines("migrated"); len(got) != 1 || got[0] != id {
		t.Fatalf("migrated %v, want [%s]", got, id)
	}
	f.apply(a, api.DesiredApp{Release: rel, Action: api.ActionHooks, Stage: config.StageBeforeActivate, RunOnce: []string{api.RunOnceAll}, Token: 1, Rollout: 1, Task: 2})
	if got := f.lines("seeded"); len(got) != 1 {
		t.Fatalf("the role db hook (RunOnceAll) on a node with role db: seeded %v, want once", got)
	}
}
