//go:build integration

package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/testenv/haproxytest"
	"github.com/drover/drover/internal/testenv/loadgen"
)

// The zero-downtime harness: a namespace fleet whose app listens on each
// host's own address, a real HAProxy in front of it in the root namespace,
// and a bounded load generator through HAProxy for the whole deploy.

// lbBackend is the HAProxy backend holding the fleet; its servers are
// named as the hosts are in drover.yml (h1, h2, ...).
const lbBackend = "app"

// lbOptions shape a fleet behind HAProxy.
type lbOptions struct {
	Hosts   int      // default 4
	Prepare []string // extra prepare commands (see appOptions.Prepare)
	// Boot is how long the app takes from its start to listening, as a
	// real app that loads its code and connects to its database does;
	// the example app itself listens within milliseconds.
	Boot time.Duration
}

// lbFleet is a push fleet serving release v1 behind a running HAProxy.
type lbFleet struct {
	*push
	url    string               // HAProxy's frontend: GET it as a user would
	hap    *haproxytest.HAProxy // HAProxy's own view of the backend
	socket string               // HAProxy's admin socket, for drover.yml
	v1     string               // the release every host serves when newLBFleet returns
}

// newLBFleet starts the fleet, deploys v1 with the default strategy and no
// balancer named in drover.yml (as a team that adopts one later), starts
// HAProxy over the hosts and waits until it reports every server UP.
func newLBFleet(t testing.TB, o lbOptions) *lbFleet {
	t.Helper()
	if o.Hosts == 0 {
		o.Hosts = 4
	}
	roles := map[int][]string{}
	for i := range o.Hosts {
		roles[i] = []string{"web"}
	}
	prepare := slices.Clone(o.Prepare)
	if o.Boot > 0 {
		// bin/hello becomes a script that waits, then execs the app.
		prepare = append(prepare, "mv bin/hello bin/hello.real",
			fmt.Sprintf(`printf '#!/bin/sh\nsleep %.3f\nexec "$(dirname "$0")/hello.real" "$@"\n' > bin/hello`, o.Boot.Seconds()),
			"chmod +x bin/hello")
	}
	p := newPush(t, appOptions{Hosts: o.Hosts, Roles: roles, Listen: "0.0.0.0", Prepare: prepare})
	f := &lbFleet{push: p}

	rep, r := p.deployJSON()
	if r.code != 0 {
		t.Fatalf("deploy v1: %s", r)
	}
	f.v1 = rep.Release
	var servers []haproxytest.Server
	for i, h := range p.fleet.Hosts {
		servers = append(servers, haproxytest.Server{Name: p.names[i], Addr: net.JoinHostPort(h.Addr, strconv.Itoa(webPort))})
	}
	h := haproxytest.Start(t, haproxytest.Options{Backend: lbBackend, Servers: servers, Inter: hapInter})
	f.url, f.socket, f.hap = h.URL+"/", h.Socket, h
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("haproxy show stat at the end:\n%s", h.Command(t, "show stat"))
			t.Logf("haproxy log:\n%s", h.Log())
		}
	})
	f.waitAllServing(t)
	return f
}

// waitAllServing waits until HAProxy sends requests to every server.
func (f *lbFleet) waitAllServing(t testing.TB) {
	t.Helper()
	f.hap.WaitServers(t, 20*time.Second, "every server UP and enabled", haproxytest.Stat.Serving)
}

// envKeys matches the strategy and load_balancer lines of drover.yml's
// environment.
var envKeys = regexp.MustCompile(`(?m)^    (strategy|load_balancer): .*\n`)

// commitEnv commits drover.yml with the environment's strategy (a YAML
// flow mapping, "" for the default) and, with balancer, the HAProxy in
// front of the fleet; files go in the same commit, which is a new release.
func (f *lbFleet) commitEnv(msg, strategy string, balancer bool, files map[string]string) {
	f.t.Helper()
	y := envKeys.ReplaceAllString(f.repo.Git("show", "HEAD:drover.yml"), "")
	var keys string
	if strategy != "" {
		keys += "    strategy: " + strategy + "\n"
	}
	if balancer {
		keys += fmt.Sprintf("    load_balancer: {type: haproxy, socket: %s, backend: %s}\n", f.socket, lbBackend)
	}
	if !strings.Contains(y, "\n    hosts:\n") {
		f.t.Fatalf("drover.yml has no environment hosts: to add keys before:\n%s", y)
	}
	y = strings.Replace(y, "\n    hosts:\n", "\n"+keys+"    hosts:\n", 1)
	all := map[string]string{"drover.yml": y, "VERSION": msg + "\n"}
	for k, v := range files {
		all[k] = v
	}
	f.repo.Commit(msg, all)
}

// startLoad starts the load through HAProxy (bounded in count and time,
// stopped when the test ends) and waits until it gets answers. It is an
// open loop of 100 requests a second, as users arrive, so requests held in
// HAProxy's connection retries do not hide the ones that fail meanwhile.
func (f *lbFleet) startLoad(t testing.TB) *loadgen.Run {
	t.Helper()
	run := loadgen.Start(context.Background(), loadgen.Options{
		URL: f.url, Workers: 128, Rate: 100, Timeout: 5 * time.Second,
		MaxRequests: 20000, MaxDuration: 100 * time.Second,
	})
	t.Cleanup(func() { run.Stop() })
	waitFor(t, 15*time.Second, "the load to get answers through haproxy", func() bool { return run.Snapshot().OK >= 20 })
	return run
}

// stopLoad stops the load and logs what it saw; it fails the test when
// the load ran out (count or time) before the deploy ended, since the end
// of the deploy then went unobserved.
func stopLoad(t testing.TB, run *loadgen.Run, what string) loadgen.Result {
	t.Helper()
	res := run.Stop()
	t.Logf("load through haproxy during %s: %s", what, res)
	if res.Ended != "stopped" {
		t.Errorf("the load ended (%s) before %s did: raise its bounds", res.Ended, what)
	}
	return res
}

// wantAnswers sends 40 fresh requests through HAProxy (at least ten per
// host with round robin) and fails unless every one gets a 2xx answer from
// one of releases.
func (f *lbFleet) wantAnswers(t testing.TB, releases ...string) {
	t.Helper()
	res := loadgen.Start(context.Background(), loadgen.Options{
		URL: f.url, Workers: 2, MaxRequests: 40, Timeout: 5 * time.Second, MaxDuration: 30 * time.Second,
	}).Wait()
	if res.Total != 40 || res.Failed() != 0 {
		t.Errorf("after the deploy, 40 requests through haproxy: %s", res)
	}
	for _, id := range res.ReleaseIDs() {
		if !slices.Contains(releases, id) {
			t.Errorf("after the deploy, %d answers from release %s, want only %v: %s", res.Releases[id], id, releases, res)
		}
	}
}

// notSupportedLB is how a drover whose config refuses load_balancer says so.
var notSupportedLB = regexp.MustCompile(`(?m)^drover: \S+:\d+: environments\.test\.load_balancer: not supported yet`)

// requireBalancerSupport skips the test when the drover binary refuses
// load_balancer in drover.yml as "not supported yet" (a binary built
// before the load-balancer support). It checks a minimal drover.yml with
// `drover tasks`; any other outcome than success or that exact refusal
// fails the test, so the skip never hides another error.
func requireBalancerSupport(t testing.TB) {
	t.Helper()
	dir := t.TempDir()
	yml := filepath.Join(dir, "drover.yml")
	writeFile(t, yml, fmt.Sprintf(`app: probe
repo: %s
deploy_to: /srv/probe
environments:
  test:
    branch: main
    strategy: {type: rolling, batch: 1}
    load_balancer: {type: haproxy, socket: %s, backend: %s}
    hosts:
      - {name: h1, host: 10.0.0.1}
`, dir, filepath.Join(dir, "admin.sock"), lbBackend))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, apptest.DroverBinary(t), "-f", yml, "tasks")
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil {
		return
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 && notSupportedLB.MatchString(stderr.String()) {
		t.Skipf("this drover refuses load_balancer (%s); the test runs once load-balancer support is built in", strings.TrimSpace(stderr.String()))
	}
	t.Fatalf("drover tasks with a load_balancer: %v\n--- stdout\n%s--- stderr\n%s", err, stdout.String(), stderr.String())
}

// underLoad is one deploy with load through HAProxy for all of it.
type underLoad struct {
	rep     report
	run     result
	load    loadgen.Result
	retries int // connections HAProxy retried or redispatched during the deploy
}

// deployUnderLoad starts the load, deploys with -o json, and keeps the
// load running until the hosts HAProxy sent requests to before the deploy
// serve again and 50 more requests have finished: failures right after a
// restart (a server HAProxy has just marked DOWN) count too. Then it stops
// the load, letting requests in flight finish, and logs the loss figures.
func (f *lbFleet) deployUnderLoad(t testing.TB, what string, args ...string) underLoad {
	t.Helper()
	serving := map[string]bool{}
	for name, s := range f.hap.Stats(t) {
		serving[name] = s.Serving()
	}
	run := f.startLoad(t)
	before := f.hap.Retries(t)
	var u underLoad
	u.run = f.drover(append([]string{"deploy", env, "-o", "json"}, args...)...)
	// A deploy refused before it starts may print no report.
	if err := json.Unmarshal([]byte(u.run.stdout), &u.rep); err != nil && u.run.code == 0 {
		t.Fatalf("deploy -o json: %v\n%s", err, u.run)
	}
	f.hap.WaitServers(t, 30*time.Second, "the hosts that served before the deploy to serve again", func(s haproxytest.Stat) bool {
		return !serving[s.Name] || s.Serving()
	})
	n := run.Snapshot().Total
	waitFor(t, 20*time.Second, "50 more requests after the deploy", func() bool { return run.Snapshot().Total >= n+50 })
	u.load = stopLoad(t, run, what)
	u.retries = f.hap.Retries(t) - before
	t.Logf("%s: %d of %d requests failed (%.2f%%), haproxy retried %d connections", what, u.load.Failed(), u.load.Total, 100*float64(u.load.Failed())/float64(max(u.load.Total, 1)), u.retries)
	return u
}

// wantNoLoss fails unless the load saw no failure and HAProxy's retries
// hid none either.
func wantNoLoss(t testing.TB, what string, u underLoad) {
	t.Helper()
	if u.load.Failed() != 0 || len(u.load.Status) != 0 {
		t.Errorf("%s lost %d of %d requests (non-2xx by status %v): %s", what, u.load.Failed(), u.load.Total, u.load.Status, u.load)
	}
	if u.retries != 0 {
		t.Errorf("%s: haproxy retried %d connections to a server that refused them: a host restarted while it still took requests", what, u.retries)
	}
}
