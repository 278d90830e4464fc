//go:build integration

package pull

// The fixture of the server-run rollout tests: the pull fleet of
// fleet_test.go with nodes node1..nodeN (the HAProxy server names, when
// there is an HAProxy in front of them) and a drover.yml that records what
// each node did, so a test can tell what ran where, when and how often.
//
// Every commit's prepare hook appends "prepare RELEASE COMMIT TIME" to the
// node's shared/events and its after_activate hook "activate RELEASE
// COMMIT TIME"; the run_once hook migrate (before_activate) appends "NODE
// RELEASE" to one file outside every node's releases (fleet.migrations).
// A file BOOT in the commit makes the app take that many seconds from its
// start to listening, as a real app does; FAIL and GATED work as in
// fleet_test.go; GATED_ACTIVATE holds each node's activation likewise in a
// before_activate hook (shared/at-act-gate-COMMIT, shared/act-gate-COMMIT).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/testenv/haproxytest"
	"github.com/drover/drover/internal/testenv/loadgen"
)

// rolloutYAML is drover.yml of the rollout tests: %[1]s the repository,
// %[2]s the hello binary, %[3]s the migrations file, %[4]s the
// environment's extra keys (strategy, load_balancer), %[5]s deploy_to,
// %[6]s the environment's hosts: none for the agents (pull mode: the
// server's nodes are the agents that joined), the local host for a push.
const rolloutYAML = `app: hello
repo: %[1]s
deploy_to: %[5]s
keep_releases: 5
shared:
  dirs: [log, tmp/pids]
hooks:
  prepare:
    - echo "prepare $DROVER_RELEASE $DROVER_COMMIT $(date +%%s.%%N)" >> "$DROVER_SHARED_DIR/events"
    - mkdir -p bin && cp %[2]s bin/hello.real
    - |
      printf '#!/bin/sh\nsleep %%s\nexec "$(dirname "$0")/hello.real" "$@"\n' "$(cat BOOT 2>/dev/null || echo 0)" > bin/hello
      chmod +x bin/hello
    - |
      if [ -f FAIL ]; then echo "FAIL is in this commit"; exit 1; fi
    - |
      if [ -f GATED ]; then
        touch "$DROVER_SHARED_DIR/at-gate-$DROVER_COMMIT"
        i=0
        while [ ! -f "$DROVER_SHARED_DIR/gate-$DROVER_COMMIT" ]; do
          i=$((i+1)); if [ $i -gt 1800 ]; then echo "gate never opened"; exit 1; fi
          sleep 0.05
        done
      fi
  migrate: {run_once: true, commands: ['echo "$DROVER_HOST $DROVER_RELEASE" >> %[3]s']}
  before_activate:
    - |
      if [ -f GATED_ACTIVATE ]; then
        touch "$DROVER_SHARED_DIR/at-act-gate-$DROVER_COMMIT"
        i=0
        while [ ! -f "$DROVER_SHARED_DIR/act-gate-$DROVER_COMMIT" ]; do
          i=$((i+1)); if [ $i -gt 1800 ]; then echo "gate never opened"; exit 1; fi
          sleep 0.05
        done
      fi
  after_activate:
    - echo "activate $DROVER_RELEASE $DROVER_COMMIT $(date +%%s.%%N)" >> "$DROVER_SHARED_DIR/events"
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
%[4]s%[6]s`

// agentDeployTo is deploy_to in the rollout tests' drover.yml: each agent
// deploys to its own, from its config.
const agentDeployTo = "/nonexistent/overridden-by-the-agent"

// Rolling strategies of the tests (drover.yml environment keys).
const (
	// rollingLB: one node at a time, drained in HAProxy first.
	rollingLB = "{type: rolling, batch: 1, min_healthy: 3}"
	// rollingOne: one node at a time, no load balancer.
	rollingOne = "{type: rolling, batch: 1}"
)

// rolloutOptions shape a rollout fleet.
type rolloutOptions struct {
	nodes      int      // default 3
	haproxy    bool     // an HAProxy in front of the nodes' apps
	serverArgs []string // added to `drover server`
	db         string   // store URL; "" SQLite
	replicas   int      // servers sharing db; default 1
}

// rolloutFleet is a pull fleet whose agents run, for server-run rollouts.
type rolloutFleet struct {
	*fleet
	hap        *haproxytest.HAProxy // nil without Options.haproxy
	migrations string               // the run_once hook's file
}

// newRolloutFleet starts the servers, the agents and, when asked, HAProxy
// (every node DOWN in it until a release runs).
func newRolloutFleet(t *testing.T, o rolloutOptions) *rolloutFleet {
	t.Helper()
	if o.nodes == 0 {
		o.nodes = 3
	}
	names := make([]string, o.nodes)
	for i := range names {
		names[i] = fmt.Sprintf("node%d", i+1)
	}
	r := &rolloutFleet{}
	r.fleet = newFleetWith(t, fleetOptions{
		names: names, serverArgs: o.serverArgs, db: o.db, replicas: o.replicas,
		yaml: func(f *fleet) string {
			r.migrations = filepath.Join(f.root, "migrations")
			return r.yml(f, "", agentDeployTo)
		},
	})
	if o.haproxy {
		var servers []haproxytest.Server
		for _, n := range r.nodes {
			servers = append(servers, haproxytest.Server{Name: n.name, Addr: fmt.Sprintf("127.0.0.1:%d", n.port)})
		}
		// No retries: a request sent to a node that restarts fails at the
		// client, so the no-loss test cannot pass on HAProxy's retries.
		r.hap = haproxytest.Start(t, haproxytest.Options{Servers: servers, NoRetries: true})
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("haproxy show stat at the end: %+v\nshow servers state: %v\nlog:\n%s", r.hap.Stats(t), r.hap.States(t), r.hap.Log())
			}
		})
	}
	r.startAgents()
	return r
}

// yml is the rollout drover.yml with the environment's extra keys.
func (r *rolloutFleet) yml(f *fleet, keys, deployTo string) string {
	hosts := ""
	if deployTo != agentDeployTo {
		hosts = "    hosts:\n      - {transport: local, roles: [web]}\n"
	}
	return fmt.Sprintf(rolloutYAML, f.repo.Dir, apptest.HelloBinary(f.t), r.migrations, keys, deployTo, hosts)
}

// strategyKeys are drover.yml's environment keys for strategy, with the
// fleet's HAProxy as load balancer when lb.
func (r *rolloutFleet) strategyKeys(strategy string, lb bool) string {
	keys := "    strategy: " + strategy + "\n"
	if lb {
		keys += fmt.Sprintf("    load_balancer: {type: haproxy, socket: %s, backend: %s}\n", r.hap.Socket, r.hap.Backend)
	}
	return keys
}

// commitEnv commits drover.yml with the environment keys, VERSION msg and
// files (a new release); it returns the commit.
func (r *rolloutFleet) commitEnv(msg, keys string, files map[string]string) string {
	r.t.Helper()
	all := map[string]string{"drover.yml": r.yml(r.fleet, keys, agentDeployTo)}
	for k, v := range files {
		all[k] = v
	}
	return r.commit(msg, all)
}

// createArgs is `release create` of commit with the repository.
func createArgs(repo, commit string, extra ...string) []string {
	return append([]string{"release", "create", app, env, "commit:" + commit, "--repo", repo, "-o", "json"}, extra...)
}

// createWait is `release create COMMIT --wait -o json`: the rollout at its
// end, and the CLI's result (exit 1 when the rollout failed).
func (r *rolloutFleet) createWait(commit string, extra ...string) (api.Rollout, result) {
	r.t.Helper()
	res := r.droverIn(r.root, 110*time.Second, createArgs(r.repo.Dir, commit, append(extra, "--wait")...)...)
	var ro api.Rollout
	if err := json.Unmarshal([]byte(res.stdout), &ro); err != nil || ro.ID == 0 {
		r.t.Fatalf("release create --wait -o json: exit %d, no rollout in the output (%v)\n%s%s", res.code, err, res.stdout, res.stderr)
	}
	return ro, res
}

// mustCreateWait is createWait that fails the test unless the rollout
// succeeded.
func (r *rolloutFleet) mustCreateWait(commit string, extra ...string) api.Rollout {
	r.t.Helper()
	ro, res := r.createWait(commit, extra...)
	if res.code != 0 || ro.State != "succeeded" {
		r.t.Fatalf("release create %s --wait: exit %d, rollout %d %s: %s\n%s%s", commit[:7], res.code, ro.ID, ro.State, ro.Error, res.stdout, res.stderr)
	}
	return ro
}

// create is `release create COMMIT -o json` without waiting: the release
// and its rollout, queued or running.
func (r *rolloutFleet) create(commit string, extra ...string) api.ReleaseCreated {
	r.t.Helper()
	out := r.mustDrover(createArgs(r.repo.Dir, commit, extra...)...)
	var rc api.ReleaseCreated
	if err := json.Unmarshal([]byte(out), &rc); err != nil || rc.Rollout == nil {
		r.t.Fatalf("release create -o json: no rollout in the answer (%v)\n%s", err, out)
	}
	return rc
}

// rollouts is `drover rollouts APP ENV -o json`.
func (r *rolloutFleet) rollouts() []api.Rollout {
	r.t.Helper()
	out := r.mustDrover("rollouts", app, env, "-o", "json")
	var list []api.Rollout
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		r.t.Fatalf("rollouts -o json: %v\n%s", err, out)
	}
	return list
}

// rollout is rollout id from `drover rollouts`.
func (r *rolloutFleet) rollout(id int64) api.Rollout {
	r.t.Helper()
	list := r.rollouts()
	for _, ro := range list {
		if ro.ID == id {
			return ro
		}
	}
	r.t.Fatalf("rollout %d is not in `drover rollouts`: %+v", id, list)
	return api.Rollout{}
}

// ended reports whether a rollout state is final.
func ended(state string) bool {
	switch state {
	case "succeeded", "failed", "cancelled", "superseded", "aborted":
		return true
	}
	return false
}

// waitRollout waits (at most within) until rollout id ended, and returns it.
func (r *rolloutFleet) waitRollout(id int64, within time.Duration) api.Rollout {
	r.t.Helper()
	var ro api.Rollout
	r.waitWithin(within, fmt.Sprintf("rollout %d ends", id), func() (bool, string) {
		ro = r.rollout(id)
		return ended(ro.State), fmt.Sprintf("%s phase %q runner %q nodes %+v", ro.State, ro.Phase, ro.Runner, ro.Nodes)
	})
	return ro
}

// waitWithin is waitFor with its own bound.
func (f *fleet) waitWithin(within time.Duration, what string, cond func() (bool, string)) {
	f.t.Helper()
	deadline := time.Now().Add(within)
	last := ""
	for {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		if time.Now().After(deadline) {
			f.t.Fatalf("after %s still not true: %s\nlast: %s", within, what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// event is one line of a node's shared/events.
type event struct {
	kind    string // prepare or activate
	release string // engine release ID
	commit  string
	at      time.Time
	node    string
}

// events reads the events file of a deploy_to.
func events(t testing.TB, node, deployTo string) []event {
	t.Helper()
	var out []event
	for _, line := range strings.Split(readFile(filepath.Join(deployTo, "shared", "events")), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			continue
		}
		sec, err := strconv.ParseFloat(f[3], 64)
		if err != nil {
			t.Fatalf("%s: events line %q: %v", node, line, err)
		}
		out = append(out, event{kind: f[0], release: f[1], commit: f[2], at: time.Unix(0, int64(sec*1e9)), node: node})
	}
	return out
}

// nodeEvents are the events of node n.
func nodeEvents(t testing.TB, n *node) []event { return events(t, n.name, n.deployTo) }

// count is how many of evs are kind of release.
func count(evs []event, kind, release string) int {
	n := 0
	for _, e := range evs {
		if e.kind == kind && e.release == release {
			n++
		}
	}
	return n
}

// migrated returns the lines of the migrations file: "NODE RELEASE".
func (r *rolloutFleet) migrated() []string {
	var out []string
	for _, l := range strings.Split(readFile(r.migrations), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// migratedFor is how many migration lines name release id.
func (r *rolloutFleet) migratedFor(id string) int {
	n := 0
	for _, l := range r.migrated() {
		if strings.HasSuffix(l, " "+id) {
			n++
		}
	}
	return n
}

// wantOnRelease fails the test unless every node in nodes runs and serves
// release id.
func (r *rolloutFleet) wantOnRelease(id string, nodes ...*node) {
	r.t.Helper()
	for _, n := range nodes {
		r.waitFor(n.name+" runs and serves "+id, func() (bool, string) {
			a, s := active(n), serving(n)
			return a == id && s == id, "current " + a + ", serving " + s
		})
	}
}

// wantNoneOut fails the test when HAProxy holds a node out of service
// (drained, in maintenance or weight 0) by its runtime API.
func (r *rolloutFleet) wantNoneOut() {
	r.t.Helper()
	for name, s := range r.hap.States(r.t) {
		if s.Out() {
			r.t.Errorf("haproxy: %s is left out of service: %v", name, s)
		}
	}
}

// leaseArgs gives `drover server` a 5 s deploy lease when it has a flag
// for one, so a takeover comes quickly; else the default lease applies
// and the test logs it.
func leaseArgs(t testing.TB) []string {
	t.Helper()
	out, _ := runOut(apptest.DroverBinary(t), "server", "--help")
	for _, flag := range []string{"--lease", "--deploy-lease", "--lock-lease"} {
		if strings.Contains(out, flag+" ") {
			return []string{flag, "5s"}
		}
	}
	t.Logf("drover server has no flag to shorten the deploy lease; a takeover waits the default lease")
	return nil
}

// runOut runs a command and returns its combined output.
func runOut(bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

// startFailover serves a reverse proxy on loopback in front of the
// replicas: each connection goes to the first replica that accepts it, so
// when one is killed its clients (agents, the CLI) reach the other at
// once, as behind a real load balancer. It returns the proxy's URL.
func startFailover(t testing.TB, replicas []*replica) string {
	t.Helper()
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var last error
		for _, r := range replicas {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", r.addr)
			if err == nil {
				return c, nil
			}
			last = err
		}
		return nil, last
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", "drover-replicas"
		},
		Transport:     &http.Transport{DialContext: dial, DisableKeepAlives: true},
		FlushInterval: -1,
		// A killed replica cuts its requests short: expected, not news.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: proxy}
	done := make(chan struct{})
	go func() { defer close(done); _ = hs.Serve(ln) }()
	t.Cleanup(func() { hs.Close(); <-done })
	return "http://" + ln.Addr().String()
}

// startLoad starts bounded load through HAProxy (an open loop of 100
// requests a second, stopped when the test ends) and waits until it gets
// answers.
func (r *rolloutFleet) startLoad() *loadgen.Run {
	r.t.Helper()
	run := loadgen.Start(context.Background(), loadgen.Options{
		URL: r.hap.URL + "/", Workers: 128, Rate: 100, Timeout: 5 * time.Second,
		MaxRequests: 20000, MaxDuration: 110 * time.Second,
	})
	r.t.Cleanup(func() { run.Stop() })
	r.waitFor("the load gets answers through haproxy", func() (bool, string) {
		s := run.Snapshot()
		return s.OK >= 20, s.String()
	})
	return run
}

// underLoad is one server-run rollout with load through HAProxy for all
// of it.
type underLoad struct {
	ro      api.Rollout
	run     result
	load    loadgen.Result
	retries int // connections HAProxy retried or redispatched meanwhile
}

// rolloutUnderLoad starts the load, runs `release create COMMIT --wait`,
// and keeps the load on until the nodes HAProxy sent requests to before
// serve again and 50 more requests finished. Then it stops the load and
// logs the figures.
func (r *rolloutFleet) rolloutUnderLoad(what, commit string) underLoad {
	r.t.Helper()
	before := map[string]bool{}
	for name, s := range r.hap.Stats(r.t) {
		before[name] = s.Serving()
	}
	run := r.startLoad()
	retries := r.hap.Retries(r.t)
	var u underLoad
	u.ro, u.run = r.createWait(commit)
	r.hap.WaitServers(r.t, 30*time.Second, "the nodes that served before the rollout serve again", func(s haproxytest.Stat) bool {
		return !before[s.Name] || s.Serving()
	})
	n := run.Snapshot().Total
	r.waitFor("50 more requests after the rollout", func() (bool, string) {
		s := run.Snapshot()
		return s.Total >= n+50, s.String()
	})
	u.load = run.Stop()
	u.retries = r.hap.Retries(r.t) - retries
	r.t.Logf("%s: %s; haproxy retried %d connections", what, u.load, u.retries)
	if u.load.Ended != "stopped" {
		r.t.Errorf("the load ended (%s) before %s did: raise its bounds", u.load.Ended, what)
	}
	return u
}

// allServing waits until HAProxy sends requests to every node.
func (r *rolloutFleet) allServing() {
	r.t.Helper()
	r.hap.WaitServers(r.t, 30*time.Second, "every node UP and enabled", haproxytest.Stat.Serving)
}

// startV1 rolls out the first commit (default strategy) to every node
// and returns its engine release ID.
func (r *rolloutFleet) startV1() string {
	r.t.Helper()
	ro := r.mustCreateWait(r.repo.Head())
	id := ro.Release
	if id == "" {
		r.t.Fatalf("rollout %d of v1 names no engine release: %+v", ro.ID, ro)
	}
	r.wantOnRelease(id, r.nodes...)
	if r.hap != nil {
		r.allServing()
	}
	return id
}

// writeGates opens the prepare gates of commit on every node at once.
func (r *rolloutFleet) writeGates(commit string) {
	r.t.Helper()
	for _, n := range r.nodes {
		openGate(r.t, n, commit)
	}
}
