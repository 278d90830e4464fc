package bench

// A fleet of simulated agents in processes of their own: the test binary
// re-executed with -test.run=^TestHelperAgents$, each process holding up
// to helperMaxAgents agents with one connection each, so a `drover server`
// process can face 10,000 agents under a 20,000 open-file limit per
// process. A helper reports what its agents do as lines on file
// descriptor 3 (a pipe the benchmark reads):
//
//	J idx                                  joined and said hello
//	P idx                                  about to send a long-poll
//	D idx nanos rel rollout task action token   a desired state to act on arrived
//	S idx nanos rel rollout task action    StartUpgrade answered
//	R idx nanos rel rollout task action    final report (succeeded) answered
//	E idx message                          the agent failed and stopped
//
// nanos is the wall clock (Unix nanoseconds) when it happened; the
// benchmark compares it with its own clock on the same machine.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
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
	"github.com/drover/drover/internal/release"
)

// Environment of a helper process.
const (
	helperEnv         = "DROVER_BENCH_HELPER"          // "1" in a helper
	helperURLEnv      = "DROVER_BENCH_HELPER_URL"      // the server
	helperTokensEnv   = "DROVER_BENCH_HELPER_TOKENS"   // file of "idx join-token" lines
	helperLifetimeEnv = "DROVER_BENCH_HELPER_LIFETIME" // seconds before it stops on its own
	// helperMaxAgents is the most agents one helper holds: one socket each
	// under the 20,000 open-file hard limit, with room for the rest.
	helperMaxAgents = 19000
	// joinParallel is how many agents of one helper join at once.
	joinParallel = 16
)

// TestHelperAgents is a helper process of the fleet benchmarks, not a
// test: it runs only when DROVER_BENCH_HELPER=1 (see startFleet). It joins
// one simulated agent per line of the tokens file and runs them until its
// standard input closes (the benchmark ended or died) or its lifetime ends.
func TestHelperAgents(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper process of the fleet benchmarks (startFleet runs it)")
	}
	lifetime := time.Duration(envInt(helperLifetimeEnv, 1800)) * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), lifetime)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	out := &eventWriter{w: bufio.NewWriterSize(os.NewFile(3, "events"), 64<<10)}
	go out.flushEvery(ctx, 20*time.Millisecond)
	if err := runHelper(ctx, os.Getenv(helperURLEnv), os.Getenv(helperTokensEnv), out); err != nil {
		t.Fatal(err)
	}
	out.flush()
}

// eventWriter serialises event lines of many agents; flushEvery flushes
// them in batches so 10,000 agents waking at once cost few writes.
type eventWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (e *eventWriter) printf(format string, args ...any) {
	e.mu.Lock()
	fmt.Fprintf(e.w, format+"\n", args...)
	e.mu.Unlock()
}

func (e *eventWriter) flush() {
	e.mu.Lock()
	_ = e.w.Flush()
	e.mu.Unlock()
}

func (e *eventWriter) flushEvery(ctx context.Context, d time.Duration) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			e.flush()
			return
		case <-t.C:
			e.flush()
		}
	}
}

// runHelper joins the agents of tokensFile to the server at base and
// follows the server with each until ctx ends.
func runHelper(ctx context.Context, base, tokensFile string, out *eventWriter) error {
	data, err := os.ReadFile(tokensFile)
	if err != nil {
		return err
	}
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err == nil && r.Cur < r.Max {
		r.Cur = r.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
	lines := strings.Fields(string(data))
	if len(lines)%2 != 0 || len(lines)/2 > helperMaxAgents {
		return fmt.Errorf("%s: want at most %d lines of \"index token\"", tokensFile, helperMaxAgents)
	}
	joinSlots := make(chan struct{}, joinParallel)
	var wg sync.WaitGroup
	for i := 0; i < len(lines); i += 2 {
		idx, err := strconv.Atoi(lines[i])
		if err != nil {
			return fmt.Errorf("%s: index %q: %w", tokensFile, lines[i], err)
		}
		c, err := api.NewClient(base, "", "")
		if err != nil {
			return err
		}
		c.HTTP.Transport.(*http.Transport).MaxIdleConnsPerHost = 1
		a := &fleetAgent{idx: idx, sim: simAgent{name: fmt.Sprintf("node%05d", idx), client: c}, out: out}
		wg.Add(1)
		go func() {
			defer wg.Done()
			joinSlots <- struct{}{}
			err := a.sim.join(ctx, lines[i+1])
			<-joinSlots
			if err == nil {
				out.printf("J %d", idx)
				err = a.follow(ctx)
			}
			if err != nil && ctx.Err() == nil {
				out.printf("E %d %s", idx, strings.ReplaceAll(err.Error(), "\n", " "))
			}
		}()
	}
	wg.Wait()
	return nil
}

// fleetAgent is one simulated agent of a helper: it long-polls like
// internal/agent and answers each new task at once, as an agent whose
// work takes no time would.
type fleetAgent struct {
	idx int
	sim simAgent
	out *eventWriter

	serving  string            // engine release it serves
	maxToken int64             // highest fencing token it acted on
	done     map[[2]int64]bool // {rollout, task} done, or {0, release} outside rollouts
}

// follow long-polls Desired with wait=30s until ctx ends and acts on every
// new desired state: outside a rollout it upgrades to the release unless it
// serves it already; in a rollout it does each task once. Each is
// StartUpgrade, then a final report succeeded with the release it serves,
// then hello, as the real agent does.
func (a *fleetAgent) follow(ctx context.Context) error {
	a.done = map[[2]int64]bool{}
	version := int64(-1)
	for ctx.Err() == nil {
		a.out.printf("P %d", a.idx)
		d, err := a.sim.client.Desired(ctx, version, pollWait)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("desired: %w", err)
		}
		got := time.Now()
		version = d.Version
		for _, da := range d.Apps {
			if err := a.act(ctx, got, da); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
	}
	return nil
}

// act does what one desired app asks, when it is new.
func (a *fleetAgent) act(ctx context.Context, got time.Time, da api.DesiredApp) error {
	rel := da.Release
	if rel == nil || da.Token < a.maxToken {
		return nil // nothing yet, or a stale state (the real agent refuses it too)
	}
	target := release.NewID(rel.CreatedAt, rel.Commit)
	key := [2]int64{da.Rollout, da.Task}
	if da.Rollout == 0 {
		if target == a.serving {
			return nil
		}
		key = [2]int64{0, rel.ID}
	}
	if a.done[key] {
		return nil
	}
	action := da.Action
	if action == "" {
		action = api.ActionActivate
	}
	ev := fmt.Sprintf("%d %d %d %s", rel.ID, da.Rollout, da.Task, action)
	a.out.printf("D %d %d %s %d", a.idx, got.UnixNano(), ev, da.Token)
	a.maxToken = max(a.maxToken, da.Token)
	up, err := a.sim.client.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: rel.ID, App: da.App, Env: da.Env, Rollout: da.Rollout, Task: da.Task})
	if err != nil {
		return fmt.Errorf("start upgrade (%s): %w", ev, err)
	}
	a.out.printf("S %d %d %s", a.idx, time.Now().UnixNano(), ev)
	serving := a.serving
	switch action {
	case api.ActionActivate:
		serving = target
	case api.ActionRollback:
		serving = da.To
	}
	if err := a.sim.client.Report(ctx, up.ID, api.Report{Status: api.StatusSucceeded, Serving: serving}); err != nil {
		return fmt.Errorf("report (%s): %w", ev, err)
	}
	a.out.printf("R %d %d %s", a.idx, time.Now().UnixNano(), ev)
	a.serving = serving
	a.done[key] = true
	apps := []api.NodeApp{{App: da.App, Env: da.Env, Roles: []string{"web"}, Release: serving, Commit: rel.Commit}}
	if err := a.sim.client.Hello(ctx, api.Hello{Hostname: a.sim.name, AgentVersion: "bench", Apps: apps}); err != nil {
		return fmt.Errorf("hello after %s: %w", ev, err)
	}
	return nil
}

// fleetEvent is one D, S or R line of a helper.
type fleetEvent struct {
	kind    byte
	idx     int
	at      time.Time
	rel     int64
	rollout int64
	task    int64
	action  string
}

// fleet is the simulated agents of the helper processes, as the benchmark
// sees them through their event lines.
type fleet struct {
	n     int
	procs []*exec.Cmd

	mu      sync.Mutex
	joined  int
	polling []bool // the agent's last event is P: it waits in a long-poll
	npoll   int    // agents polling
	polls   int64  // long-polls sent in all
	events  map[int64][]fleetEvent
	agents  map[countKey]map[int]bool // which agents sent such events, for count
	failed  []string
	exited  int // helper processes whose event pipe closed
}

// startFleet starts n simulated agents in helper processes (one per
// helperMaxAgents, or procs when larger) that join the server at base with
// the join tokens, and waits until every agent joined and waits in its
// long-poll. Every helper is killed when tb ends.
func startFleet(tb testing.TB, base string, joins []string, procs int) *fleet {
	tb.Helper()
	n := len(joins)
	procs = max(procs, (n+helperMaxAgents-1)/helperMaxAgents, 1)
	f := &fleet{n: n, polling: make([]bool, n), events: map[int64][]fleetEvent{}, agents: map[countKey]map[int]bool{}}
	dir := tb.TempDir()
	for p := range procs {
		lo, hi := p*n/procs, (p+1)*n/procs
		var sb strings.Builder
		for i := lo; i < hi; i++ {
			fmt.Fprintf(&sb, "%d %s\n", i, joins[i])
		}
		tokens := filepath.Join(dir, fmt.Sprintf("tokens%d", p))
		if err := os.WriteFile(tokens, []byte(sb.String()), 0o600); err != nil {
			tb.Fatal(err)
		}
		f.start(tb, base, tokens, filepath.Join(dir, fmt.Sprintf("helper%d.log", p)))
	}
	start := time.Now()
	f.wait(tb, "every agent joined", 10*time.Minute, func() bool { return f.joined == n })
	tb.Logf("%d agents in %d helper processes joined in %s", n, procs, time.Since(start).Round(time.Millisecond))
	f.wait(tb, "every agent long-polls", 2*time.Minute, func() bool { return f.npoll == n })
	return f
}

// start runs one helper process for the agents of tokens.
func (f *fleet) start(tb testing.TB, base, tokens, logPath string) {
	tb.Helper()
	lf, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperAgents$", "-test.count=1", "-test.timeout=0")
	cmd.Env = append(os.Environ(), helperEnv+"=1", helperURLEnv+"="+base, helperTokensEnv+"="+tokens)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.ExtraFiles = []*os.File{pw}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	// The helper dies with the benchmark process, whatever ends it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	pw.Close()
	f.procs = append(f.procs, cmd)
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.read(pr)
	}()
	tb.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		<-done
		pr.Close()
		lf.Close()
	})
}

// read takes a helper's event lines until its pipe closes.
func (f *fleet) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f.event(sc.Text())
	}
	f.mu.Lock()
	f.exited++
	f.mu.Unlock()
}

func (f *fleet) event(line string) {
	fs := strings.Fields(line)
	if len(fs) < 2 {
		return
	}
	idx, err := strconv.Atoi(fs[1])
	if err != nil || idx < 0 || idx >= f.n {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.polling[idx] && fs[0] != "P" {
		f.polling[idx] = false
		f.npoll--
	}
	switch fs[0] {
	case "J":
		f.joined++
	case "P":
		f.polls++
		if !f.polling[idx] {
			f.polling[idx] = true
			f.npoll++
		}
	case "E":
		f.failed = append(f.failed, fmt.Sprintf("node%05d: %s", idx, strings.Join(fs[2:], " ")))
	case "D", "S", "R":
		if len(fs) < 7 {
			return
		}
		nanos, _ := strconv.ParseInt(fs[2], 10, 64)
		rel, _ := strconv.ParseInt(fs[3], 10, 64)
		rollout, _ := strconv.ParseInt(fs[4], 10, 64)
		task, _ := strconv.ParseInt(fs[5], 10, 64)
		f.events[rel] = append(f.events[rel], fleetEvent{kind: fs[0][0], idx: idx, at: time.Unix(0, nanos), rel: rel, rollout: rollout, task: task, action: fs[6]})
		for _, k := range []countKey{{rel, fs[0][0], fs[6]}, {rel, fs[0][0], "*"}} {
			if f.agents[k] == nil {
				f.agents[k] = map[int]bool{}
			}
			f.agents[k][idx] = true
		}
	}
}

// errFleet is returned by wait's condition check when an agent failed or a
// helper exited.
var errFleet = errors.New("the simulated fleet failed")

// wait polls cond (called with f.mu held) until it holds, failing tb after
// timeout or as soon as an agent failed or a helper process exited.
func (f *fleet) wait(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		f.mu.Lock()
		ok := cond()
		failed, exited, joined, npoll := f.failed, f.exited, f.joined, f.npoll
		f.mu.Unlock()
		if ok {
			return
		}
		switch {
		case len(failed) > 0:
			tb.Fatalf("waiting until %s: %v: %d agents failed, first: %s", what, errFleet, len(failed), failed[0])
		case exited > 0:
			tb.Fatalf("waiting until %s: %v: a helper process exited (logs in the benchmark's temp dir)", what, errFleet)
		case time.Now().After(deadline):
			tb.Fatalf("waiting until %s: not after %s (%d of %d agents joined, %d long-polling)", what, timeout, joined, f.n, npoll)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// of returns the events of kind for release rel matching match (nil: all).
func (f *fleet) of(rel int64, kind byte, match func(fleetEvent) bool) []fleetEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fleetEvent
	for _, e := range f.events[rel] {
		if e.kind == kind && (match == nil || match(e)) {
			out = append(out, e)
		}
	}
	return out
}

// count returns how many distinct agents have an event of kind for rel
// with action ("" for any); call it with f.mu held.
func (f *fleet) count(rel int64, kind byte, action string) int {
	if action == "" {
		action = "*"
	}
	return len(f.agents[countKey{rel, kind, action}])
}

// countKey groups events for count: the agents that sent an event of kind
// about release rel for action ("*": any action).
type countKey struct {
	rel    int64
	kind   byte
	action string
}
