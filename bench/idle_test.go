package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/server"
	"github.com/drover/drover/internal/store"
	"github.com/drover/drover/internal/testenv/apptest"
)

// envInt reads a positive integer from the environment, or def.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// procStatus returns the kB values of VmRSS and VmHWM of pid.
func procStatus(tb testing.TB, pid int) (rss, hwm float64) {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(fields[1], 64)
		switch fields[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm
}

// procCPU returns utime+stime of pid in seconds (USER_HZ is 100 on Linux).
func procCPU(tb testing.TB, pid int) float64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command name, which is in parentheses: state is
	// field 3, utime 14, stime 15.
	rest := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseFloat(rest[11], 64)
	st, _ := strconv.ParseFloat(rest[12], 64)
	return (ut + st) / 100
}

// droverProcess starts the drover binary with args and output to a log
// file; it is killed when the benchmark ends.
func droverProcess(tb testing.TB, logPath string, args ...string) *exec.Cmd {
	tb.Helper()
	lf, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(apptest.DroverBinary(tb), args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+filepath.Join(filepath.Dir(logPath), "cache"))
	// DROVER_BENCH_CHILD_ENV adds variables to the drover processes only,
	// e.g. "GOMEMLIMIT=200MiB GOGC=50" to see what the GC settings buy.
	cmd.Env = append(cmd.Env, strings.Fields(os.Getenv("DROVER_BENCH_CHILD_ENV"))...)
	// It dies with the benchmark process, whatever ends that.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		lf.Close()
	})
	return cmd
}

// startServerProcess prepares a data dir (admin token and n join tokens,
// written to the SQLite file before the server opens it) and starts
// `drover server` on it. It returns the server's URL, the admin token, the
// join tokens and the process.
func startServerProcess(ctx context.Context, tb testing.TB, n int) (string, string, []string, *exec.Cmd) {
	tb.Helper()
	s := startServer(ctx, tb, "", n)
	return s.url, s.admin, s.joins, s.cmd
}

// serverProc is a `drover server` process and what its clients need.
type serverProc struct {
	url   string
	admin string   // an admin token
	joins []string // one-time join tokens
	cmd   *exec.Cmd
	dir   string // its temp dir: data/, server.log
}

// startServer prepares a store (SQLite in the data dir when dbURL is "",
// else dbURL) with an admin token and n join tokens, then starts `drover
// server` on it with joins unlimited (thousands of simulated agents join
// from one address) and args added, and waits until it answers. The
// process is killed when tb ends.
func startServer(ctx context.Context, tb testing.TB, dbURL string, n int, args ...string) *serverProc {
	tb.Helper()
	dir := tb.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		tb.Fatal(err)
	}
	open := dbURL
	if open == "" {
		open = filepath.Join(data, "drover.db")
	}
	st, err := store.Open(ctx, open)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := server.EnsureAdminToken(ctx, st, data); err != nil {
		tb.Fatal(err)
	}
	joins := joinTokens(ctx, tb, st, n)
	st.Close()
	admin, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		tb.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", apptest.FreePorts(tb, 1)[0])
	argv := []string{"server", "--data", data, "--listen", addr, "--join-rate", "-1", "--join-rate-total", "-1"}
	if dbURL != "" {
		argv = append(argv, "--db", dbURL)
	}
	cmd := droverProcess(tb, filepath.Join(dir, "server.log"), append(argv, args...)...)
	tb.Cleanup(func() {
		if tb.Failed() {
			logTail(tb, filepath.Join(dir, "server.log"), "level=ERROR", 20)
		}
	})
	url := "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "server.log"))
			tb.Fatalf("server did not answer: %v\n%s", err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return &serverProc{url: url, admin: strings.TrimSpace(string(admin)), joins: joins, cmd: cmd, dir: dir}
}

// BenchmarkServerIdle measures a `drover server` process (SQLite) holding
// DROVER_BENCH_IDLE_AGENTS (default 10,000) idle long-polling agents, one
// loopback connection each, simulated in this process: resident memory
// (server-rss-MB, peak server-hwm-MB) and CPU while idle over
// DROVER_BENCH_IDLE_SECONDS (default 60, two long-poll periods), as a
// percentage of one core. join-s is how long the agents took to join.
func BenchmarkServerIdle(b *testing.B) {
	n := envInt("DROVER_BENCH_IDLE_AGENTS", 10000)
	window := time.Duration(envInt("DROVER_BENCH_IDLE_SECONDS", 60)) * time.Second
	raiseFileLimit(b, uint64(n+256))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, _, joins, cmd := startServerProcess(ctx, b, n)
	pid := cmd.Process.Pid

	start := time.Now()
	agents := make([]*simAgent, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i := range agents {
		agents[i] = &simAgent{name: fmt.Sprintf("node%05d", i), client: newClient(b, base, "")}
		g.Go(func() error { return agents[i].join(gctx, joins[i]) })
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	joined := time.Since(start)

	var polls atomic.Int64
	followCtx, stopFollow := context.WithCancel(ctx)
	fg := &errgroup.Group{}
	for _, a := range agents {
		fg.Go(func() error { return a.follow(followCtx, nil, func() { polls.Add(1) }) })
	}
	waitPolling(b, &polls, int64(2*n))
	time.Sleep(2 * time.Second) // the last long-polls reach the server

	b.ResetTimer()
	var rss, hwm, cpu float64
	for range b.N {
		c0 := procCPU(b, pid)
		t0 := time.Now()
		time.Sleep(window)
		cpu = (procCPU(b, pid) - c0) / time.Since(t0).Seconds() * 100
		rss, hwm = procStatus(b, pid)
	}
	b.StopTimer()
	if cmd.ProcessState != nil {
		b.Fatalf("the server exited")
	}
	stopFollow()
	if err := fg.Wait(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(rss/1024, "server-rss-MB")
	b.ReportMetric(hwm/1024, "server-hwm-MB")
	b.ReportMetric(cpu, "server-cpu-%")
	b.ReportMetric(joined.Seconds(), "join-s")
	b.ReportMetric(float64(polls.Load()-int64(2*n))/float64(b.N)/window.Seconds(), "polls/s")
}

// BenchmarkAgentIdle measures a real `drover agent` process: it joins a
// `drover server` process, deploys the example app once (fetch, prepare
// hook, health-checked service), then idles in its long-poll. Metrics:
// agent-rss-MB after it settles (DROVER_BENCH_SETTLE_SECONDS, default 10),
// its peak agent-hwm-MB, and agent-cpu-% while idle over that time.
func BenchmarkAgentIdle(b *testing.B) {
	settle := time.Duration(envInt("DROVER_BENCH_SETTLE_SECONDS", 10)) * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, adminToken, _, _ := startServerProcess(ctx, b, 0)
	admin := newClient(b, base, adminToken)
	join, err := admin.CreateJoinToken(ctx, api.CreateJoinToken{Apps: []string{"hello"}, Envs: []string{"test"}})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	deployTo := filepath.Join(dir, "srv")
	a := apptest.New(b, apptest.Options{DeployTo: deployTo})
	cfg := filepath.Join(dir, "agent.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("server: %s\njoin_token: %s\nstate_dir: %s\nnode: bench1\napps:\n  - {app: hello, env: test, repo: %s, deploy_to: %s, roles: [web, db]}\n",
		base, join.Token, filepath.Join(dir, "state"), a.Repo.Dir, deployTo)), 0o600); err != nil {
		b.Fatal(err)
	}
	rel, err := admin.CreateRelease(ctx, api.CreateRelease{App: "hello", Env: "test", Spec: "branch:main", Commit: a.Repo.Head()})
	if err != nil {
		b.Fatal(err)
	}
	agent := droverProcess(b, filepath.Join(dir, "agent.log"), "agent", "--config", cfg)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := admin.Status(ctx, "hello", "test")
		if err == nil && len(st) == 1 && st[0].Status == api.StatusSucceeded && st[0].Target == rel.ID {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "agent.log"))
			b.Fatalf("the agent did not deploy the release: %+v %v\n%s", st, err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pid := agent.Process.Pid
	b.ResetTimer()
	var rss, hwm, cpu float64
	for range b.N {
		c0 := procCPU(b, pid)
		t0 := time.Now()
		time.Sleep(settle)
		cpu = (procCPU(b, pid) - c0) / time.Since(t0).Seconds() * 100
		rss, hwm = procStatus(b, pid)
	}
	b.StopTimer()
	b.ReportMetric(rss/1024, "agent-rss-MB")
	b.ReportMetric(hwm/1024, "agent-hwm-MB")
	b.ReportMetric(cpu, "agent-cpu-%")
}

// logTail logs the lines of the file at path that contain match, so a
// failed benchmark shows why before its temp dir goes: each distinct
// message once (its time cut off) with how often it came, the last n.
func logTail(tb testing.TB, path, match string, n int) {
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Logf("%s: %v", path, err)
		return
	}
	count := map[string]int{}
	var order []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, match) {
			continue
		}
		if strings.HasPrefix(l, "time=") {
			_, l, _ = strings.Cut(l, " ")
		}
		if count[l] == 0 {
			order = append(order, l)
		}
		count[l]++
	}
	var out strings.Builder
	for _, l := range order[max(0, len(order)-n):] {
		fmt.Fprintf(&out, "%dx %s\n", count[l], l)
	}
	tb.Logf("%s: %d distinct lines with %q, the last %d:\n%s", path, len(order), match, min(n, len(order)), out.String())
}
