//go:build integration

// Package test holds drover's multi-host tests: a fleet of real sshd hosts
// (internal/testenv/sshfleet), each with its own network namespace and its
// own /srv, driven by the real drover binary exactly as a user runs it.
package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/testenv/gitrepo"
	"github.com/drover/drover/internal/testenv/sshfleet"
)

// deployTo is where every host keeps the app; /srv is private to each host.
const (
	deployTo = "/srv/hello"
	webPort  = 8000
	env      = "test"
)

// appOptions shape the drover.yml of a push fleet.
type appOptions struct {
	Hosts     int               // number of sshd hosts (default 3)
	Roles     map[int][]string  // roles by host index (default [web], and db on h1)
	Hooks     string            // YAML under hooks:, after the prepare hook (indented two spaces); @SHARED@ is the shared dir
	Prepare   []string          // extra prepare commands, after copying the binary; @SHARED@ as in Hooks
	Strategy  string            // environment strategy type
	NoService bool              // no web service (benchmarks)
	Socket    bool              // the web service has socket: true
	NoHello   bool              // the prepare hook does not copy the example app
	Listen    string            // the address the web service binds (default the app's own, 127.0.0.1)
	Extra     []string          // extra YAML host entries (flow mappings)
	Files     map[string]string // more files in the first commit
	StopGrace string            // the web service's stop_grace (default 5s)
}

// push is a fleet of sshd hosts with an app repository and drover.yml,
// and a drover binary to drive them.
type push struct {
	t      testing.TB
	fleet  *sshfleet.Fleet
	repo   *gitrepo.Repo
	bin    string
	shared string   // a directory every host sees: hooks write here
	env    []string // drover's environment: private cache and state dirs
	names  []string // h1, h2, ...
	known  string   // known_hosts drover uses
}

// newPush starts the fleet, writes drover.yml and commits the first version.
func newPush(t testing.TB, o appOptions) *push {
	t.Helper()
	if o.Hosts == 0 {
		o.Hosts = 3
	}
	bin := apptest.DroverBinary(t)
	// Each host gets a private, empty home (and so its own ~/.drover): SSH
	// sessions then run no rc files of the machine's user (a pyenv init in
	// ~/.bashrc costs more CPU than drover), as on a freshly made server.
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	f := sshfleet.Start(t, o.Hosts, sshfleet.Options{RequireNamespaces: true, PrivateDirs: []string{"/srv", home}})
	p := &push{t: t, fleet: f, repo: gitrepo.New(t), bin: bin, shared: t.TempDir(), known: f.KnownHosts}
	state := t.TempDir()
	p.env = append(os.Environ(), "XDG_CACHE_HOME="+filepath.Join(state, "cache"), "XDG_STATE_HOME="+filepath.Join(state, "state"))

	var hosts strings.Builder
	for i, h := range f.Hosts {
		name := fmt.Sprintf("h%d", i+1)
		p.names = append(p.names, name)
		roles, ok := o.Roles[i]
		if !ok {
			roles = []string{"web"}
			if i == 0 {
				roles = append(roles, "db")
			}
		}
		fmt.Fprintf(&hosts, "      - {name: %s, host: %s, port: %d, user: %s, roles: [%s]}\n", name, h.Addr, h.Port, f.User, strings.Join(roles, ", "))
	}
	for _, e := range o.Extra {
		fmt.Fprintf(&hosts, "      - %s\n", e)
	}
	prepare := []string{"true"}
	if !o.NoHello {
		prepare = []string{"mkdir -p bin", "cp " + apptest.HelloBinary(t) + " bin/hello"}
	}
	prepare = append(prepare, o.Prepare...)
	for i := range prepare {
		prepare[i] = strings.ReplaceAll(prepare[i], "@SHARED@", p.shared)
	}
	o.Hooks = strings.ReplaceAll(o.Hooks, "@SHARED@", p.shared)
	var y strings.Builder
	fmt.Fprintf(&y, "app: hello\nrepo: %s\ndeploy_to: %s\nkeep_releases: 5\nshared:\n  dirs: [log]\n", p.repo.Dir, deployTo)
	fmt.Fprintf(&y, "hooks:\n  prepare: %s\n%s", yamlList(prepare), o.Hooks)
	if o.StopGrace == "" {
		o.StopGrace = "5s"
	}
	if !o.NoService {
		start := "./bin/hello --port {{port}}"
		if o.Listen != "" {
			start += " --addr " + o.Listen
		}
		fmt.Fprintf(&y, "services:\n  web:\n    start: %s\n    ports: [%d]\n    health: {http: \"http://127.0.0.1:{{port}}/healthz\", timeout: 15s}\n    stop_grace: %s\n", start, webPort, o.StopGrace)
		if o.Socket {
			y.WriteString("    socket: true\n    bind: 127.0.0.1\n")
		}
	}
	fmt.Fprintf(&y, "environments:\n  %s:\n    branch: main\n", env)
	if o.Strategy != "" {
		fmt.Fprintf(&y, "    strategy: {type: %s}\n", o.Strategy)
	}
	fmt.Fprintf(&y, "    hosts:\n%s", hosts.String())
	files := map[string]string{"drover.yml": y.String(), "README": "example\n", "log/.keep": ""}
	for k, v := range o.Files {
		files[k] = v
	}
	p.repo.Commit("example app", files)
	return p
}

// yamlList renders commands as a YAML flow list of quoted strings.
func yamlList(cmds []string) string {
	b, _ := json.Marshal(cmds) // a JSON array of strings is valid YAML
	return string(b)
}

// commit makes a new commit on main, so the next deploy is a new release.
func (p *push) commit(msg string) string {
	p.t.Helper()
	return p.repo.Commit(msg, map[string]string{"VERSION": msg + "\n"})
}

// result is one drover run.
type result struct {
	code    int
	stdout  string
	stderr  string
	elapsed time.Duration
	cpu     time.Duration // user+system CPU of the drover process itself
}

func (r result) out() string { return r.stdout + r.stderr }

func (r result) String() string {
	return fmt.Sprintf("exit %d after %s\n--- stdout\n%s--- stderr\n%s", r.code, r.elapsed.Round(time.Millisecond), r.stdout, r.stderr)
}

// command builds a drover command line with the fleet's SSH files.
func (p *push) command(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"-f", "drover.yml", "--known-hosts", p.known, "--ssh-config", p.fleet.SSHConfig, "--identity", p.fleet.KeyFile}, args...)
	cmd := exec.CommandContext(ctx, p.bin, full...)
	cmd.Dir = p.repo.Dir
	cmd.Env = p.env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// drover runs drover with args and a timeout and returns what it did.
func (p *push) drover(args ...string) result {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := p.command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	if cmd.ProcessState != nil {
		r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		p.t.Fatalf("drover %s: %v\n%s", strings.Join(args, " "), err, r)
	}
	if ctx.Err() != nil {
		p.t.Fatalf("drover %s: timed out\n%s", strings.Join(args, " "), r)
	}
	p.t.Logf("drover %s: %s", strings.Join(args, " "), r)
	return r
}

// mustDrover runs drover and fails the test unless it exits 0.
func (p *push) mustDrover(args ...string) result {
	p.t.Helper()
	r := p.drover(args...)
	if r.code != 0 {
		p.t.Fatalf("drover %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// deployJSON deploys with -o json and returns the parsed report.
func (p *push) deployJSON(args ...string) (report, result) {
	p.t.Helper()
	r := p.drover(append([]string{"deploy", env, "-o", "json"}, args...)...)
	var rep report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		p.t.Fatalf("deploy -o json: %v\n%s", err, r)
	}
	return rep, r
}

// report is the part of rollout.Report the tests read, decoded from -o json
// as a script would.
type report struct {
	App       string `json:"app"`
	Env       string `json:"env"`
	Release   string `json:"release"`
	Commit    string `json:"commit"`
	Activated bool   `json:"activated"`
	Error     string `json:"error"`
	Hosts     []struct {
		Host    string   `json:"host"`
		State   string   `json:"state"`
		Phase   string   `json:"phase"`
		Step    string   `json:"step"`
		Error   string   `json:"error"`
		Tail    []string `json:"tail"`
		Release string   `json:"release"`
	} `json:"hosts"`
}

// current returns the release host i's current symlink names, "" if none.
func (p *push) current(i int) string {
	p.t.Helper()
	target, err := os.Readlink(p.fleet.Hosts[i].Path(deployTo + "/current"))
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		p.t.Fatal(err)
	}
	return filepath.Base(target)
}

// currents returns every host's current release.
func (p *push) currents() []string {
	out := make([]string, len(p.fleet.Hosts))
	for i := range p.fleet.Hosts {
		out[i] = p.current(i)
	}
	return out
}

// wantServing fails unless every host's current is id and its web service
// answers with id.
func (p *push) wantServing(id string) {
	p.t.Helper()
	for i := range p.fleet.Hosts {
		if got := p.current(i); got != id {
			p.t.Errorf("%s: current → %q, want %q", p.names[i], got, id)
		}
		body, err := p.get(i, webPort, "/")
		if err != nil {
			p.t.Errorf("%s: GET /: %v", p.names[i], err)
			continue
		}
		if !strings.Contains(body, "release: "+id+"\n") {
			p.t.Errorf("%s: service answers %q, want release %s", p.names[i], body, id)
		}
	}
}

// ssh opens an SSH connection to host i with the fleet's key, for looking
// at the host from inside its namespace (independently of drover's client).
func (p *push) ssh(i int) *gossh.Client {
	p.t.Helper()
	key, err := os.ReadFile(p.fleet.KeyFile)
	if err != nil {
		p.t.Fatal(err)
	}
	signer, err := gossh.ParsePrivateKey(key)
	if err != nil {
		p.t.Fatal(err)
	}
	h := p.fleet.Hosts[i]
	c, err := gossh.Dial("tcp", h.Address(), &gossh.ClientConfig{
		User: p.fleet.User, Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.FixedHostKey(h.HostKey), Timeout: 10 * time.Second,
	})
	if err != nil {
		p.t.Fatalf("ssh %s: %v", h.Address(), err)
	}
	return c
}

// get fetches path from 127.0.0.1:port as seen by host i: through an SSH
// direct-tcpip channel, so the request starts inside the host's network
// namespace, where the app listens on loopback.
func (p *push) get(i, port int, path string) (string, error) {
	c := p.ssh(i)
	defer c.Close()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return c.DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
	resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), err
}

// waitFor polls cond every 50ms until it holds or within passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s", within, what)
		case <-tick.C:
		}
	}
}

// lockHolder reads host i's deploy lock file and returns its holder's
// owner and pid, or ok false when the lock is free.
func (p *push) lockHolder(i int) (owner string, pid int, ok bool) {
	p.t.Helper()
	data, err := os.ReadFile(p.fleet.Hosts[i].Path(deployTo + "/.drover/lock"))
	if errors.Is(err, os.ErrNotExist) {
		return "", 0, false
	}
	if err != nil {
		p.t.Fatal(err)
	}
	var st struct {
		Holder *struct {
			Owner string `json:"owner"`
			PID   int    `json:"pid"`
		} `json:"holder"`
	}
	if err := json.Unmarshal(data, &st); err != nil || st.Holder == nil {
		return "", 0, false
	}
	return st.Holder.Owner, st.Holder.PID, true
}

// sharedLines returns the non-empty lines of a file in the shared directory.
func (p *push) sharedLines(name string) []string {
	p.t.Helper()
	b, err := os.ReadFile(filepath.Join(p.shared, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		p.t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func removeFile(t testing.TB, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

// killProcess SIGKILLs a started drover.
func killProcess(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill drover: %v", err)
	}
}
