//go:build integration

// Package pull holds drover's pull-mode end-to-end tests: one real
// `drover server` process on SQLite and three real `drover agent`
// processes, each a node with its own deploy_to, state_dir and web port,
// following the server for the example app (examples/hello).
//
// The app's drover.yml comes from the commit being deployed, so it cannot
// name a per-node port. Each node keeps its port in shared/port (the shared
// directory survives every release and is the node's own), and the web
// service is portless: its start and health commands read the file. The
// same commit therefore runs on three nodes of one machine without a port
// clash, and nothing depends on the agent's environment.
//
// Two files in a commit's tree steer its prepare hook, so one repository
// serves every scenario: FAIL makes the hook fail, GATED makes it touch
// shared/at-gate-COMMIT and wait (at most a minute) for
// shared/gate-COMMIT, which the test creates when it wants the node to go on.
package pull

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/testenv/gitrepo"
)

const (
	app = "hello"
	env = "demo"
	// bound is the longest any awaited condition may take.
	bound = 90 * time.Second
)

// appYAML is the app's drover.yml; %s are the repository and the hello binary.
const appYAML = `app: hello
repo: %s
deploy_to: /nonexistent/overridden-by-the-agent
keep_releases: 3
shared:
  dirs: [log, tmp/pids]
hooks:
  prepare:
    - mkdir -p bin && cp %s bin/hello
    - |
      if [ -f FAIL ]; then echo "FAIL is in this commit"; exit 1; fi
    - |
      if [ -f GATED ]; then
        touch "$DROVER_SHARED_DIR/at-gate-$DROVER_COMMIT"
        i=0
        while [ ! -f "$DROVER_SHARED_DIR/gate-$DROVER_COMMIT" ]; do
          i=$((i+1)); if [ $i -gt 1200 ]; then echo "gate never opened"; exit 1; fi
          sleep 0.05
        done
      fi
services:
  web:
    start: exec ./bin/hello --port "$(cat "$DROVER_SHARED_DIR/port")"
    health:
      command: curl -fsS "http://127.0.0.1:$(cat "$DROVER_SHARED_DIR/port")/healthz"
      timeout: 20s
    stop_grace: 5s
environments:
  demo:
    branch: main
    hosts:
      - {transport: local, roles: [web]}
`

// proc is a drover process the test started: server or agent.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL to the process alone and waits for it.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	if !p.alive() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("pid %d did not die after SIGKILL", p.cmd.Process.Pid)
	}
}

// node is one agent's machine: its config, deploy_to, shared port.
type node struct {
	name     string
	dir      string
	deployTo string
	config   string
	port     int
	agent    *proc
	starts   int
}

func (n *node) shared(name string) string { return filepath.Join(n.deployTo, "shared", name) }

// fleet is a server (or several replicas), a repository and its nodes.
type fleet struct {
	t      *testing.T
	bin    string
	root   string
	data   string
	addr   string // the first server's address
	url    string // what agents and the CLI use: the server, or the replicas' proxy
	server *proc  // the first server
	repo   *gitrepo.Repo
	nodes  []*node
	env    []string
	procs  []*proc
	mu     sync.Mutex

	opts     fleetOptions
	replicas []*replica
}

// replica is one `drover server` process of the fleet.
type replica struct {
	addr string
	proc *proc
}

// fleetOptions shape a fleet; zero values give newFleet's: one SQLite
// server, nodes web1..web3, appYAML.
type fleetOptions struct {
	names []string // node names
	// yaml returns the first commit's drover.yml for the repository.
	yaml func(f *fleet) string
	// serverArgs are added to every `drover server` command line.
	serverArgs []string
	// db is the store's URL (--db); "" keeps SQLite in the data dir.
	db string
	// replicas is how many servers share db, behind one failover proxy
	// that agents and the CLI use; default 1 (no proxy).
	replicas int
}

// newFleet starts a server and writes three agent configs (agents are not
// started: startAgents).
func newFleet(t *testing.T) *fleet { return newFleetWith(t, fleetOptions{}) }

// newFleetWith starts the fleet's servers and writes an agent config per
// node (agents are not started: startAgents).
func newFleetWith(t *testing.T, o fleetOptions) *fleet {
	t.Helper()
	if len(o.names) == 0 {
		o.names = []string{"web1", "web2", "web3"}
	}
	if o.yaml == nil {
		o.yaml = func(f *fleet) string { return fmt.Sprintf(appYAML, f.repo.Dir, apptest.HelloBinary(t)) }
	}
	o.replicas = max(o.replicas, 1)
	f := &fleet{t: t, bin: apptest.DroverBinary(t), root: t.TempDir(), opts: o}
	f.data = filepath.Join(f.root, "server")
	ports := apptest.FreePorts(t, o.replicas+len(o.names))
	for i := range o.replicas {
		f.replicas = append(f.replicas, &replica{addr: fmt.Sprintf("127.0.0.1:%d", ports[i])})
	}
	f.addr = f.replicas[0].addr
	f.url = "http://" + f.addr
	if o.replicas > 1 {
		f.url = startFailover(t, f.replicas)
	}
	f.env = append(os.Environ(),
		"DROVER_SERVER="+f.url,
		"DROVER_TOKEN=@"+filepath.Join(f.data, "admin.token"),
		"XDG_CACHE_HOME="+filepath.Join(f.root, "cache"),
		"XDG_STATE_HOME="+filepath.Join(f.root, "state"),
		"NO_COLOR=1")

	f.repo = gitrepo.New(t)
	f.repo.Commit("v1", map[string]string{"drover.yml": o.yaml(f), "VERSION": "1\n"})

	t.Cleanup(func() {
		f.mu.Lock()
		procs := append([]*proc(nil), f.procs...)
		f.mu.Unlock()
		for _, p := range procs {
			if p.alive() {
				_ = p.cmd.Process.Signal(syscall.SIGKILL)
				<-p.done
			}
		}
		for _, n := range f.nodes {
			apptest.StopPIDs(n.shared("pids"))
		}
		if t.Failed() {
			for _, p := range procs {
				t.Logf("--- %s\n%s", p.log, tail(readFile(p.log), 6000))
			}
		}
	})
	for i := range f.replicas {
		f.startReplica(i)
	}

	for i, name := range o.names {
		n := &node{name: name, dir: filepath.Join(f.root, name), port: ports[o.replicas+i]}
		n.deployTo = filepath.Join(n.dir, "srv")
		n.config = filepath.Join(n.dir, "agent.yml")
		jt := strings.TrimSpace(f.mustDrover("server", "join-token", "create", "--ttl", "1h", "--app", app, "--env", env))
		cfg := fmt.Sprintf("server: %s\njoin_token: %s\nstate_dir: %s\nnode: %s\napps:\n  - {app: %s, env: %s, repo: %s, deploy_to: %s, roles: [web]}\n",
			f.url, jt, filepath.Join(n.dir, "state"), name, app, env, f.repo.Dir, n.deployTo)
		mustWrite(t, n.config, cfg)
		mustWrite(t, n.shared("port"), fmt.Sprintf("%d\n", n.port))
		f.nodes = append(f.nodes, n)
	}
	return f
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// start runs the drover binary in the background with output to a log file.
func (f *fleet) start(logName string, args ...string) *proc {
	f.t.Helper()
	return f.startIn(f.root, logName, args...)
}

// startIn is start in directory dir.
func (f *fleet) startIn(dir, logName string, args ...string) *proc {
	f.t.Helper()
	logPath := filepath.Join(f.root, logName)
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		f.t.Fatal(err)
	}
	fmt.Fprintf(lf, "=== %s %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command(f.bin, args...)
	cmd.Dir = dir
	cmd.Env = f.env
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		f.t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	f.mu.Lock()
	f.procs = append(f.procs, p)
	f.mu.Unlock()
	return p
}

// startServer (re)starts the first `drover server` on the fleet's
// address and data dir and waits until /healthz answers.
func (f *fleet) startServer() {
	f.t.Helper()
	f.startReplica(0)
}

// startReplica (re)starts server replica i and waits until its /healthz
// answers. Replicas share the data dir (the admin token) and the store.
func (f *fleet) startReplica(i int) *proc {
	f.t.Helper()
	r := f.replicas[i]
	args := []string{"server", "--data", f.data, "--listen", r.addr}
	if f.opts.db != "" {
		args = append(args, "--db", f.opts.db)
	}
	if len(f.replicas) > 1 {
		args = append(args, "--runner-name", replicaName(i))
	}
	args = append(args, f.opts.serverArgs...)
	r.proc = f.start(fmt.Sprintf("server%d.log", i+1), args...)
	if i == 0 {
		f.server = r.proc
	}
	f.waitFor(fmt.Sprintf("server %d answers /healthz", i+1), func() (bool, string) {
		if !r.proc.alive() {
			f.t.Fatalf("server %d exited: %v\n%s", i+1, r.proc.err, readFile(r.proc.log))
		}
		resp, err := http.Get("http://" + r.addr + "/healthz")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	return r.proc
}

// replicaName is server replica i's runner name (--runner-name).
func replicaName(i int) string { return fmt.Sprintf("server%d", i+1) }

// startAgent starts the node's agent daemon.
func (f *fleet) startAgent(n *node, extra ...string) *proc {
	f.t.Helper()
	n.starts++
	n.agent = f.start(n.name+".log", append([]string{"agent", "--config", n.config}, extra...)...)
	return n.agent
}

func (f *fleet) startAgents() {
	f.t.Helper()
	for _, n := range f.nodes {
		f.startAgent(n)
	}
}

// result is one finished CLI run.
type result struct {
	code           int
	stdout, stderr string
}

// drover runs the CLI with the fleet's server and admin token, from a
// directory without drover.yml.
func (f *fleet) drover(args ...string) result {
	f.t.Helper()
	return f.droverIn(f.root, 60*time.Second, args...)
}

// droverIn runs the CLI in dir, killing it after limit.
func (f *fleet) droverIn(dir string, limit time.Duration, args ...string) result {
	f.t.Helper()
	return f.droverEnv(dir, limit, nil, args...)
}

// droverEnv is droverIn with extra environment variables (NAME=value).
func (f *fleet) droverEnv(dir string, limit time.Duration, extra []string, args ...string) result {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.bin, args...)
	cmd.Dir = dir
	cmd.Env = append(slices.Clone(f.env), extra...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		f.t.Fatalf("drover %s: %v", strings.Join(args, " "), err)
	}
	return r
}

func (f *fleet) mustDrover(args ...string) string {
	f.t.Helper()
	r := f.drover(args...)
	if r.code != 0 {
		f.t.Fatalf("drover %s: exit %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// createRelease records branch:main at the repository's head (resolved
// by the CLI) and returns the server's release.
func (f *fleet) createRelease(note string) api.Release {
	f.t.Helper()
	var rel api.Release
	out := f.mustDrover("release", "create", app, env, "branch:main", "--repo", f.repo.Dir, "--note", note, "-o", "json")
	if err := json.Unmarshal([]byte(out), &rel); err != nil {
		f.t.Fatalf("release create -o json: %v\n%s", err, out)
	}
	return rel
}

// status is `drover status APP ENV -o json`, by node name.
func (f *fleet) status() map[string]api.NodeStatus {
	f.t.Helper()
	out := f.mustDrover("status", app, env, "-o", "json")
	var ns []api.NodeStatus
	if err := json.Unmarshal([]byte(out), &ns); err != nil {
		f.t.Fatalf("status -o json: %v\n%s", err, out)
	}
	m := map[string]api.NodeStatus{}
	for _, n := range ns {
		m[n.Node] = n
	}
	return m
}

// waitFor polls cond until it holds or bound passes; cond says why not.
func (f *fleet) waitFor(what string, cond func() (bool, string)) {
	f.t.Helper()
	deadline := time.Now().Add(bound)
	last := ""
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		if time.Now().After(deadline) {
			f.t.Fatalf("after %s still not true: %s\nlast: %s", bound, what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// releaseID is the engine's release ID for a server release.
func releaseID(rel api.Release) string {
	return rel.CreatedAt.UTC().Format("20060102T150405Z") + "-" + rel.Commit[:7]
}

// active is the release `current` points at on n ("" for none).
func active(n *node) string {
	target, err := os.Readlink(filepath.Join(n.deployTo, "current"))
	if err != nil {
		return ""
	}
	return filepath.Base(target)
}

// serving returns the release n's web service reports, or "".
func serving(n *node) string {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", n.port))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "release: "); ok {
			return v
		}
	}
	return ""
}

// waitNode waits until n runs, serves and reports (status succeeded) rel.
func (f *fleet) waitNode(n *node, rel api.Release) {
	f.t.Helper()
	id := releaseID(rel)
	f.waitFor(n.name+" on "+id+", serving it, status succeeded", func() (bool, string) {
		if a := active(n); a != id {
			return false, "current -> " + a
		}
		if s := serving(n); s != id {
			return false, "serving " + s
		}
		st, ok := f.status()[n.name]
		if !ok {
			return false, "not in status"
		}
		if st.Status != api.StatusSucceeded || st.Release != id || st.Target != rel.ID || st.Commit != rel.Commit {
			return false, fmt.Sprintf("status %+v", st)
		}
		return true, ""
	})
}

// waitAll waits until every node runs and reports rel.
func (f *fleet) waitAll(rel api.Release) {
	f.t.Helper()
	for _, n := range f.nodes {
		f.waitNode(n, rel)
	}
}

// commit makes a new commit on main with extra files.
func (f *fleet) commit(msg string, files map[string]string) string {
	f.t.Helper()
	if files == nil {
		files = map[string]string{}
	}
	files["VERSION"] = msg + "\n"
	return f.repo.Commit(msg, files)
}

// atGate waits until n's prepare hook of commit waits at its gate.
func (f *fleet) atGate(n *node, commit string) {
	f.t.Helper()
	f.waitFor(n.name+" waits at the gate of "+commit[:7], func() (bool, string) {
		_, err := os.Stat(n.shared("at-gate-" + commit))
		return err == nil, fmt.Sprint(err)
	})
}

// openGate lets n's prepare hook of commit go on.
func openGate(t *testing.T, n *node, commit string) {
	t.Helper()
	mustWrite(t, n.shared("gate-"+commit), "")
}

// invariants watches every node's `current` until stop is called: it must
// always point at a complete release (its directory exists, prepare built
// bin/hello, and the engine recorded it prepared). It returns the
// violations seen.
func (f *fleet) invariants() (stop func() []string) {
	done := make(chan struct{})
	var bad []string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			for _, n := range f.nodes {
				if v := checkCurrent(n); v != "" && (len(bad) == 0 || bad[len(bad)-1] != v) {
					bad = append(bad, v)
				}
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() []string {
		close(done)
		wg.Wait()
		return bad
	}
}

func checkCurrent(n *node) string {
	id := active(n)
	if id == "" {
		return ""
	}
	dir := filepath.Join(n.deployTo, "releases", id)
	if _, err := os.Stat(filepath.Join(dir, "bin", "hello")); err != nil {
		return fmt.Sprintf("%s: current -> %s, which is not complete: %v", n.name, id, err)
	}
	r, found, err := engineRecord(n, id)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Sprintf("%s: current -> %s but no state: %v", n.name, id, err)
	case err != nil:
		return fmt.Sprintf("%s: state: %v", n.name, err)
	case !found:
		return fmt.Sprintf("%s: current -> %s, not in the release history", n.name, id)
	case r.PreparedAt.IsZero():
		return fmt.Sprintf("%s: current -> %s, recorded as never prepared", n.name, id)
	}
	return ""
}
