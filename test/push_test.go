//go:build integration

package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// releaseLine is drover's release ID in the deploy banner.
var releaseLine = regexp.MustCompile(`: release (\S+) \(commit`)

// TestDeployThreeHosts: one deploy puts the same release on every host,
// every host serves it, and the summary, `releases` and -o json agree.
func TestDeployThreeHosts(t *testing.T) {
	p := newPush(t, appOptions{})
	r := p.mustDrover("deploy", env)
	m := releaseLine.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no release ID in the deploy banner:\n%s", r)
	}
	id := m[1]
	p.wantServing(id)
	if !strings.Contains(r.stdout, "HOST") || !strings.Contains(r.stdout, "RESULT") {
		t.Errorf("no summary table:\n%s", r.stdout)
	}
	for _, n := range p.names {
		if !regexp.MustCompile(`(?m)^` + n + `\s+ok\s+activate\s+` + regexp.QuoteMeta(id)).MatchString(r.stdout) {
			t.Errorf("summary has no ok row for %s on %s:\n%s", n, id, r.stdout)
		}
	}

	rel := p.mustDrover("releases", env)
	for _, n := range p.names {
		if !regexp.MustCompile(`(?m)^` + n + `\s+` + regexp.QuoteMeta(id) + `\s+active\s`).MatchString(rel.stdout) {
			t.Errorf("releases: no active %s on %s:\n%s", id, n, rel.stdout)
		}
	}
	var hosts []struct {
		Host     string `json:"host"`
		Active   string `json:"active"`
		Releases []struct {
			ID     string `json:"id"`
			Commit string `json:"commit"`
		} `json:"releases"`
	}
	js := p.mustDrover("releases", env, "-o", "json")
	if err := json.Unmarshal([]byte(js.stdout), &hosts); err != nil {
		t.Fatalf("releases -o json: %v\n%s", err, js)
	}
	if len(hosts) != 3 {
		t.Fatalf("releases -o json: %d hosts, want 3", len(hosts))
	}
	for i, h := range hosts {
		if h.Host != p.names[i] || h.Active != id || len(h.Releases) != 1 || h.Releases[0].Commit != p.repo.Head() {
			t.Errorf("releases -o json host %d = %+v, want %s active %s at %s", i, h, p.names[i], id, p.repo.Head())
		}
	}

	// A second deploy, reported as JSON, moves every host again.
	p.commit("v2")
	rep, res := p.deployJSON()
	if res.code != 0 || !rep.Activated || rep.Release == id || rep.Commit != p.repo.Head() || len(rep.Hosts) != 3 {
		t.Fatalf("deploy -o json = %+v\n%s", rep, res)
	}
	for _, h := range rep.Hosts {
		if h.State != "ok" || h.Release != rep.Release {
			t.Errorf("deploy -o json host %+v, want ok on %s", h, rep.Release)
		}
	}
	p.wantServing(rep.Release)
}

// TestRollback: after two deploys, rollback puts every host back on the
// first release, serving it; --to a release one host lacks is refused
// naming that host, and nothing moves.
func TestRollback(t *testing.T) {
	p := newPush(t, appOptions{})
	first, r := p.deployJSON()
	if r.code != 0 {
		t.Fatal(r)
	}
	p.commit("v2")
	second, r := p.deployJSON()
	if r.code != 0 {
		t.Fatal(r)
	}
	p.wantServing(second.Release)

	p.mustDrover("rollback", env)
	p.wantServing(first.Release)

	// The release rolled back from is not an interrupted deploy: resume
	// refuses to pick it up again, and nothing moves.
	r = p.drover("resume", env)
	if r.code == 0 || !strings.Contains(r.out(), "nothing to resume") || !strings.Contains(r.out(), "rolled back") {
		t.Errorf("resume after rollback:\n%s", r)
	}
	p.wantServing(first.Release)

	// A release only h1 and h3 have: prepare one on h1 and h3 only.
	p.commit("v3")
	r = p.drover("prepare", env, "--host", "h1,h3", "-o", "json")
	if r.code != 0 {
		t.Fatal(r)
	}
	var partial report
	if err := json.Unmarshal([]byte(r.stdout), &partial); err != nil {
		t.Fatalf("prepare -o json: %v\n%s", err, r)
	}
	r = p.drover("rollback", env, "--to", partial.Release)
	if r.code == 0 {
		t.Fatalf("rollback to a release h2 lacks succeeded:\n%s", r)
	}
	if !strings.Contains(r.out(), "h2 (not there)") || strings.Contains(r.out(), "h1 (not there)") {
		t.Errorf("refusal does not name h2 alone:\n%s", r)
	}
	p.wantServing(first.Release)

	// Back to the second release by name, on every host.
	p.mustDrover("rollback", env, "--to", second.Release)
	p.wantServing(second.Release)
}

// TestUnreachableHostChangesNothing: with one host whose port nothing
// listens on, deploy fails before touching any host and names the host and
// the dial error.
func TestUnreachableHostChangesNothing(t *testing.T) {
	p := newPush(t, appOptions{Hosts: 2})
	first, r := p.deployJSON()
	if r.code != 0 {
		t.Fatal(r)
	}
	// h3 is h1's address on a port nothing listens on.
	h := p.fleet.Hosts[0]
	y := p.repo.Git("show", "HEAD:drover.yml") + "\n      - {name: h3, host: " + h.Addr + ", port: 2, user: root, roles: [web]}\n"
	p.repo.Commit("h3", map[string]string{"drover.yml": y})

	r = p.drover("deploy", env)
	if r.code == 0 {
		t.Fatalf("deploy with an unreachable host succeeded:\n%s", r)
	}
	if !regexp.MustCompile(`h3: .*dial.*` + regexp.QuoteMeta(h.Addr) + `:2.*connection refused`).MatchString(r.out()) {
		t.Errorf("error does not name h3 and its dial error:\n%s", r)
	}
	if strings.Contains(r.out(), "h3: h3:") {
		t.Errorf("error names h3 twice:\n%s", r)
	}
	if !strings.Contains(r.out(), "nothing was changed") {
		t.Errorf("error does not say nothing changed:\n%s", r)
	}
	p.wantServing(first.Release)
	for i := range p.fleet.Hosts {
		if _, _, held := p.lockHolder(i); held {
			t.Errorf("%s: lock left held", p.names[i])
		}
	}
}

// TestPrepareFailsOnOneHostThenResume: a prepare hook that fails on h2
// only stops every host from activating; the summary names h2, the step
// and the hook's stderr. After fixing h2, `drover resume` finishes.
func TestPrepareFailsOnOneHostThenResume(t *testing.T) {
	check := `if [ "$DROVER_HOST" = h2 ] && [ ! -f /srv/ready ]; then echo "h2 is not ready: /srv/ready is missing" >&2; exit 7; fi`
	p := newPush(t, appOptions{Prepare: []string{check}})
	// h2 is ready for the first deploy.
	ready := p.fleet.Hosts[1].Path("/srv/ready")
	writeFile(t, ready, "")
	first, r := p.deployJSON()
	if r.code != 0 {
		t.Fatal(r)
	}
	removeFile(t, ready)

	p.commit("v2")
	r = p.drover("deploy", env)
	if r.code != 1 {
		t.Fatalf("deploy with h2 failing: want exit 1\n%s", r)
	}
	if !regexp.MustCompile(`(?m)^h2 failed in hook:prepare: .*`).MatchString(r.stdout) {
		t.Errorf("summary does not name h2 and step hook:prepare:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "h2 | h2 is not ready: /srv/ready is missing") {
		t.Errorf("summary does not show the hook's stderr:\n%s", r.stdout)
	}
	if !strings.Contains(r.stdout, "no host was activated") {
		t.Errorf("summary does not say no host was activated:\n%s", r.stdout)
	}
	p.wantServing(first.Release)
	m := releaseLine.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no release in banner:\n%s", r)
	}

	writeFile(t, ready, "")
	r = p.mustDrover("resume", env)
	if !strings.Contains(r.stderr, "resuming "+m[1]) {
		t.Errorf("resume did not name %s:\n%s", m[1], r)
	}
	p.wantServing(m[1])
}

// TestRunOnceHookRunsOnce: a run_once migrate hook for role db runs on
// exactly one host, the first with the role, though two hosts have it.
func TestRunOnceHookRunsOnce(t *testing.T) {
	p := newPush(t, appOptions{
		Roles: map[int][]string{0: {"web", "db"}, 1: {"web"}, 2: {"web", "db"}},
		Hooks: "  migrate: {run_once: true, role: db, commands: ['echo \"$DROVER_HOST $DROVER_RELEASE\" >> @SHARED@/migrated']}\n",
	})
	first, r := p.deployJSON()
	if r.code != 0 {
		t.Fatal(r)
	}
	if got, want := p.sharedLines("migrated"), []string{"h1 " + first.Release}; !slices.Equal(got, want) {
		t.Errorf("migrate ran %q, want %q", got, want)
	}
	p.commit("v2")
	second, r := p.deployJSON()
	if r.code != 0 {
		t.Fatal(r)
	}
	if got, want := p.sharedLines("migrated"), []string{"h1 " + first.Release, "h1 " + second.Release}; !slices.Equal(got, want) {
		t.Errorf("after two deploys migrate ran %q, want %q", got, want)
	}
	p.wantServing(second.Release)
}

// TestDeployLock: a deploy holds the lock on every host while it runs; a
// second deploy fails at once naming the holder; SIGKILL of the holder
// frees the lock (its host-side session sees EOF) long before the lease
// ends, and the next deploy goes through. `drover lock`/`unlock` hold and
// free it by hand.
func TestDeployLock(t *testing.T) {
	// The hook prints while it waits: a line written after its deployer
	// died must not kill it (SIGPIPE through drover node serve).
	wait := `touch @SHARED@/waiting-$DROVER_HOST; i=0; while [ ! -f @SHARED@/go ]; do i=$((i+1)); if [ $i -gt 600 ]; then echo "no go after 60s" >&2; exit 9; fi; echo "waiting $i"; sleep 0.1; done; touch @SHARED@/finished-$DROVER_HOST`
	p := newPush(t, appOptions{Prepare: []string{wait}})
	goFile := filepath.Join(p.shared, "go")
	writeFile(t, goFile, "")
	first, r := p.deployJSON()
	if r.code != 0 {
		t.Fatal(r)
	}
	removeFile(t, goFile)
	for _, n := range p.names {
		removeFile(t, filepath.Join(p.shared, "waiting-"+n))
	}

	// Deployer A stops in its prepare hook on every host, holding the lock.
	p.commit("v2")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := p.command(ctx, "deploy", env, "--lock-lease", "10m")
	var aOut bytes.Buffer
	a.Stdout, a.Stderr = &aOut, &aOut
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	aDone := make(chan error, 1)
	go func() { aDone <- a.Wait() }()
	waitFor(t, 60*time.Second, "deployer A to reach its prepare hook on every host", func() bool {
		for _, n := range p.names {
			if _, err := os.Stat(filepath.Join(p.shared, "waiting-"+n)); err != nil {
				return false
			}
		}
		return true
	})
	for i, n := range p.names {
		if _, pid, held := p.lockHolder(i); !held || pid != a.Process.Pid {
			t.Errorf("%s: lock holder pid %d (held %v), want deployer A (%d)", n, pid, held, a.Process.Pid)
		}
	}

	// B fails fast, naming A.
	p.commit("v3")
	r = p.drover("deploy", env)
	if r.code == 0 {
		t.Fatalf("second deploy succeeded while A holds the lock:\n%s", r)
	}
	if r.elapsed > 20*time.Second {
		t.Errorf("second deploy took %s to fail; want it to fail at once", r.elapsed)
	}
	if !strings.Contains(r.out(), "deploy lock held by") || !strings.Contains(r.out(), fmt.Sprintf("(pid %d)", a.Process.Pid)) {
		t.Errorf("second deploy does not name the holder (pid %d):\n%s", a.Process.Pid, r)
	}

	// kill -9 A: each host finishes the step A left running (its hook
	// survives the dead connection), records it, and only then frees its
	// lock, without waiting for the lease.
	killProcess(t, a)
	select {
	case <-aDone:
	case <-time.After(30 * time.Second):
		t.Fatal("deployer A did not exit after SIGKILL")
	}
	for i, n := range p.names {
		if _, pid, held := p.lockHolder(i); !held || pid != a.Process.Pid {
			t.Errorf("%s: lock freed (holder pid %d, held %v) while A's hook still runs", n, pid, held)
		}
	}
	writeFile(t, goFile, "") // lets A's hooks finish
	waitFor(t, 20*time.Second, "the lock to be released on every host after A's step finished", func() bool {
		for i := range p.names {
			if _, _, held := p.lockHolder(i); held {
				return false
			}
		}
		return true
	})
	for i, n := range p.names {
		if got := p.current(i); got != first.Release {
			t.Errorf("%s: current %s after A was killed in prepare, want %s", n, got, first.Release)
		}
		if _, err := os.Stat(filepath.Join(p.shared, "finished-"+n)); err != nil {
			t.Errorf("%s: A's hook did not finish after A died: %v", n, err)
		}
	}
	c, r := p.deployJSON("--lock-lease", "10m")
	if r.code != 0 {
		t.Fatalf("deploy after A died: %s\n%s", r, aOut.String())
	}
	p.wantServing(c.Release)

	// drover lock holds it until drover unlock.
	r = p.mustDrover("lock", env, "--reason", "db maintenance")
	for _, n := range p.names {
		if !strings.Contains(r.stdout, n+": locked by") {
			t.Errorf("lock: no line for %s:\n%s", n, r)
		}
	}
	p.commit("v4")
	r = p.drover("deploy", env)
	if r.code == 0 || !strings.Contains(r.out(), "db maintenance") || !strings.Contains(r.out(), "drover unlock") {
		t.Errorf("deploy while locked by hand: want a refusal naming the reason and `drover unlock`:\n%s", r)
	}
	r = p.mustDrover("unlock", env)
	for _, n := range p.names {
		if !strings.Contains(r.stdout, n+": unlocked (was held by") {
			t.Errorf("unlock: no line for %s:\n%s", n, r)
		}
	}
	d, r := p.deployJSON()
	if r.code != 0 {
		t.Fatal(r)
	}
	p.wantServing(d.Release)
}

// TestUnknownHostKey: with an empty known_hosts, deploy refuses every host
// naming its key's fingerprint; --insecure-accept-new trusts and records
// them, and later deploys need no flag.
func TestUnknownHostKey(t *testing.T) {
	p := newPush(t, appOptions{Hosts: 2})
	p.known = filepath.Join(t.TempDir(), "known_hosts")
	writeFile(t, p.known, "")

	r := p.drover("deploy", env)
	if r.code == 0 {
		t.Fatalf("deploy with unknown host keys succeeded:\n%s", r)
	}
	for i, h := range p.fleet.Hosts {
		fp := gossh.FingerprintSHA256(h.HostKey)
		if strings.Contains(r.out(), p.names[i]+": "+p.names[i]+":") {
			t.Errorf("error names %s twice:\n%s", p.names[i], r)
		}
		if !regexp.MustCompile(p.names[i] + `: .*host key for ` + regexp.QuoteMeta(h.Address()) + ` is unknown: it offers ssh-ed25519 ` + regexp.QuoteMeta(fp)).MatchString(r.out()) {
			t.Errorf("refusal does not name %s and fingerprint %s:\n%s", p.names[i], fp, r)
		}
		if got := p.current(i); got != "" {
			t.Errorf("%s: current %q after a refused deploy", p.names[i], got)
		}
	}
	if b, _ := os.ReadFile(p.known); len(b) != 0 {
		t.Errorf("known_hosts changed without --insecure-accept-new:\n%s", b)
	}

	first, r := p.deployJSON("--insecure-accept-new")
	if r.code != 0 {
		t.Fatal(r)
	}
	p.wantServing(first.Release)
	check, err := knownhosts.New(p.known)
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range p.fleet.Hosts {
		if err := check(h.Address(), &net.TCPAddr{IP: net.ParseIP(h.Addr), Port: h.Port}, h.HostKey); err != nil {
			t.Errorf("%s: known_hosts does not trust its key: %v", p.names[i], err)
		}
	}
	p.commit("v2")
	p.mustDrover("deploy", env)
}

// TestExecAndServiceStatus: exec prints each host's output prefixed by the
// host; service status lists the running process each host serves from.
func TestExecAndServiceStatus(t *testing.T) {
	p := newPush(t, appOptions{})
	p.commit("v2")
	rep, r := p.deployJSON()
	if r.code != 0 {
		t.Fatal(r)
	}
	// One word after -- is a command line for the host's shell.
	r = p.mustDrover("exec", env, "--", "echo $DROVER_HOST $(cat VERSION) $(pwd)")
	for _, n := range p.names {
		want := fmt.Sprintf("[%s] %s v2 %s/releases/%s\n", n, n, deployTo, rep.Release)
		if !strings.Contains(r.stdout, want) {
			t.Errorf("exec: no line %q:\n%s", want, r)
		}
	}
	r = p.mustDrover("exec", env, "--role", "db", "--", "echo $DROVER_HOST")
	if strings.TrimSpace(r.stdout) != "h1" {
		t.Errorf("exec --role db on one host: got %q, want h1 alone", r.stdout)
	}

	r = p.mustDrover("service", "status", env)
	for i, n := range p.names {
		m := regexp.MustCompile(`(?m)^` + n + `\s+web\s+8000\s+(\d+)\s+running\s+` + regexp.QuoteMeta(deployTo+"/releases/"+rep.Release) + `\s*$`).FindStringSubmatch(r.stdout)
		if m == nil {
			t.Errorf("service status: no running web on %s from %s:\n%s", n, rep.Release, r)
			continue
		}
		// The recorded PID leads the session the app runs in (drover
		// starts it with sh -c in a new session and signals the group).
		body, err := p.get(i, webPort, "/")
		pm := regexp.MustCompile(`pid: (\d+)\n`).FindStringSubmatch(body)
		if err != nil || pm == nil {
			t.Errorf("%s: GET /: %q %v", n, body, err)
			continue
		}
		if sid := sessionOf(t, pm[1]); sid != m[1] {
			t.Errorf("%s: service status says pid %s, but the app (pid %s) runs in session %s", n, m[1], pm[1], sid)
		}
	}
}

// TestSerialStrategy: serial activates one host at a time, in drover.yml
// order, and stops at the first host that fails: later hosts keep their
// release.
func TestSerialStrategy(t *testing.T) {
	p := newPush(t, appOptions{
		Strategy: "serial",
		Hooks: `  before_activate: ['echo "begin $DROVER_HOST" >> @SHARED@/order', 'sleep 0.2', 'if [ -f /srv/break ]; then echo "$DROVER_HOST is broken" >&2; exit 5; fi']
  after_activate: ['echo "end $DROVER_HOST" >> @SHARED@/order']
`,
	})
	first, r := p.deployJSON()
	if r.code != 0 {
		t.Fatal(r)
	}
	want := []string{"begin h1", "end h1", "begin h2", "end h2", "begin h3", "end h3"}
	if got := p.sharedLines("order"); !slices.Equal(got, want) {
		t.Errorf("serial activation order %q, want %q", got, want)
	}
	removeFile(t, filepath.Join(p.shared, "order"))

	writeFile(t, p.fleet.Hosts[1].Path("/srv/break"), "")
	p.commit("v2")
	second, r := p.deployJSON()
	if r.code != 1 {
		t.Fatalf("serial deploy with h2 broken: want exit 1\n%s", r)
	}
	want = []string{"begin h1", "end h1", "begin h2"}
	if got := p.sharedLines("order"); !slices.Equal(got, want) {
		t.Errorf("serial activation with h2 broken ran %q, want %q", got, want)
	}
	if got := p.currents(); !slices.Equal(got, []string{second.Release, first.Release, first.Release}) {
		t.Errorf("currents %q, want h1 on %s and h2, h3 still on %s", got, second.Release, first.Release)
	}
	states := map[string]string{}
	for _, h := range second.Hosts {
		states[h.Host] = h.State + "/" + h.Phase
	}
	if states["h1"] != "ok/activate" || states["h2"] != "failed/activate" || states["h3"] != "skipped/activate" {
		t.Errorf("host states %v, want h1 ok, h2 failed, h3 skipped", states)
	}
}

// sessionOf returns the session ID of a process (the fleet shares the PID
// namespace with the test).
func sessionOf(t *testing.T, pid string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return f[3] // state ppid pgrp session
}
