// Package bench measures the control server: how fast a release reaches
// many long-polling agents (propagation_test.go), and what the server and
// a real agent cost while idle (idle_test.go). README.md says how to run
// them and holds the figures.
package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/server"
	"github.com/drover/drover/internal/store"
	"github.com/drover/drover/internal/testenv/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

const (
	benchApp = "shop"
	benchEnv = "production"
	// pollWait is what every simulated agent asks for, like drover agent.
	pollWait = 30 * time.Second
)

// raiseFileLimit lifts the soft limit on open files to the hard one: each
// simulated agent holds a connection, and with an in-process server both
// ends of it are this process's descriptors.
func raiseFileLimit(tb testing.TB, need uint64) {
	tb.Helper()
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		tb.Fatal(err)
	}
	if r.Cur < r.Max {
		r.Cur = r.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
			tb.Fatal(err)
		}
	}
	if r.Cur < need {
		tb.Skipf("open-file limit %d is below the %d this benchmark needs (raise the hard limit: ulimit -Hn)", r.Cur, need)
	}
}

// newClient is one simulated agent's API client with a private transport,
// so every agent holds its own connection as a real node does.
func newClient(tb testing.TB, base, token string) *api.Client {
	c, err := api.NewClient(base, token, "")
	if err != nil {
		tb.Fatal(err)
	}
	c.HTTP.Transport.(*http.Transport).MaxIdleConnsPerHost = 1
	return c
}

// joinTokens stores n one-time join tokens and returns their secrets.
func joinTokens(ctx context.Context, tb testing.TB, st store.Store, n int) []string {
	tb.Helper()
	secrets := make([]string, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := range secrets {
		secrets[i] = server.NewSecret(store.TokenJoin)
		g.Go(func() error {
			_, err := st.CreateToken(gctx, store.Token{Kind: store.TokenJoin, Hash: server.HashToken(secrets[i]), ExpiresAt: time.Now().Add(2 * time.Hour)})
			return err
		})
	}
	if err := g.Wait(); err != nil {
		tb.Fatalf("create join tokens: %v", err)
	}
	return secrets
}

// simAgent is a goroutine that speaks the agent's protocol: join, hello,
// long-poll Desired, and StartUpgrade for every new release it sees.
type simAgent struct {
	name   string
	client *api.Client
}

// join exchanges the join token for a node token and says hello.
func (a *simAgent) join(ctx context.Context, joinToken string) error {
	apps := []api.NodeApp{{App: benchApp, Env: benchEnv, Roles: []string{"web"}}}
	j, err := a.client.Join(ctx, api.Join{JoinToken: joinToken, Node: a.name, Hostname: a.name, AgentVersion: "bench", Apps: apps})
	if err != nil {
		return fmt.Errorf("%s: join: %w", a.name, err)
	}
	a.client.Token = j.Token
	if err := a.client.Hello(ctx, api.Hello{Hostname: a.name, AgentVersion: "bench", Apps: apps}); err != nil {
		return fmt.Errorf("%s: hello: %w", a.name, err)
	}
	return nil
}

// follow long-polls until ctx ends; seen is called when a new release
// appears, after the agent recorded its upgrade with StartUpgrade.
// polling is called once each time a long-poll is about to be sent.
func (a *simAgent) follow(ctx context.Context, seen func(rel int64, started time.Time), polling func()) error {
	version := int64(-1)
	last := int64(0)
	for ctx.Err() == nil {
		if polling != nil {
			polling()
		}
		d, err := a.client.Desired(ctx, version, pollWait)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%s: desired: %w", a.name, err)
		}
		version = d.Version
		for _, da := range d.Apps {
			if da.Release == nil || da.Release.ID == last {
				continue
			}
			last = da.Release.ID
			if _, err := a.client.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: da.Release.ID, App: da.App, Env: da.Env}); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("%s: start upgrade: %w", a.name, err)
			}
			if seen != nil {
				seen(da.Release.ID, time.Now())
			}
		}
	}
	return nil
}

// inProcessServer serves the API from st on a loopback listener in this
// process, as `drover server` does, until the benchmark ends.
func inProcessServer(ctx context.Context, tb testing.TB, st store.Store) string {
	tb.Helper()
	srv := server.New(st, slog.New(slog.DiscardHandler))
	srv.JoinRate, srv.JoinRateTotal = 0, 0 // thousands of simulated agents join from one address
	if err := srv.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	hs := srv.HTTPServer()
	go hs.Serve(srv.Listener(ln, nil))
	tb.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(c)
		hs.Close()
		srv.Close()
	})
	return "http://" + ln.Addr().String()
}

// BenchmarkPropagation measures the time from `release create` (the API
// call starting) to each of N simulated agents having started its upgrade
// (StartUpgrade answered), over b.N releases. Metrics: p50-ms and p99-ms of
// every agent's latency, last-ms the median over releases of the slowest
// agent, max-last-ms the worst release.
func BenchmarkPropagation(b *testing.B) {
	for _, backend := range []string{dbtest.SQLite, dbtest.Postgres} {
		for _, n := range []int{100, 1000} {
			b.Run(fmt.Sprintf("%s/agents=%d", backend, n), func(b *testing.B) {
				benchPropagation(b, backend, n)
			})
		}
	}
}

func benchPropagation(b *testing.B, backend string, n int) {
	raiseFileLimit(b, uint64(2*n+256))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	url := dbtest.New(b, backend)
	st, err := store.Open(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	dir := b.TempDir()
	if _, err := server.EnsureAdminToken(ctx, st, dir); err != nil {
		b.Fatal(err)
	}
	adminSecret, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		b.Fatal(err)
	}
	base := inProcessServer(ctx, b, st)
	admin := newClient(b, base, strings.TrimSpace(string(adminSecret)))
	secrets := joinTokens(ctx, b, st, n)

	agents := make([]*simAgent, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i := range agents {
		agents[i] = &simAgent{name: fmt.Sprintf("node%05d", i), client: newClient(b, base, "")}
		g.Go(func() error { return agents[i].join(gctx, secrets[i]) })
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}

	// Every agent's upgrade start per release, and who is long-polling.
	var (
		mu      sync.Mutex
		started = map[int64][]time.Time{}
		arrived = make(chan struct{}, n)
		polls   atomic.Int64
	)
	followCtx, stopFollow := context.WithCancel(ctx)
	fg := &errgroup.Group{}
	for _, a := range agents {
		fg.Go(func() error {
			return a.follow(followCtx, func(rel int64, at time.Time) {
				mu.Lock()
				started[rel] = append(started[rel], at)
				mu.Unlock()
				arrived <- struct{}{}
			}, func() { polls.Add(1) })
		})
	}
	// Each agent sends a first poll (version -1, answered at once), then a
	// long-poll, and one more after each release.
	waitPolling(b, &polls, int64(2*n))

	var all []time.Duration
	var lasts []time.Duration
	var procCPUs, sysCPUs float64
	b.ResetTimer()
	for i := range b.N {
		p0, s0 := procCPU(b, os.Getpid()), sysBusy(b)
		t0 := time.Now()
		rel, err := admin.CreateRelease(ctx, api.CreateRelease{App: benchApp, Env: benchEnv, Spec: "branch:main", Commit: strings.Repeat(fmt.Sprintf("%x", i%16), 40)})
		if err != nil {
			b.Fatal(err)
		}
		deadline := time.NewTimer(60 * time.Second)
		for range n {
			select {
			case <-arrived:
			case <-deadline.C:
				mu.Lock()
				got := len(started[rel.ID])
				mu.Unlock()
				b.Fatalf("release %d: %d of %d agents started their upgrade within 60s", rel.ID, got, n)
			}
		}
		deadline.Stop()
		procCPUs += procCPU(b, os.Getpid()) - p0
		sysCPUs += sysBusy(b) - s0
		mu.Lock()
		times := started[rel.ID]
		mu.Unlock()
		var last time.Duration
		for _, at := range times {
			d := at.Sub(t0)
			all = append(all, d)
			last = max(last, d)
		}
		lasts = append(lasts, last)
		// Every agent is back in its long-poll before the next release.
		waitPolling(b, &polls, int64((i+3)*n))
	}
	b.StopTimer()
	stopFollow()
	if err := fg.Wait(); err != nil {
		b.Fatal(err)
	}
	slices.Sort(all)
	slices.Sort(lasts)
	b.ReportMetric(ms(percentile(all, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(all, 0.99)), "p99-ms")
	b.ReportMetric(ms(percentile(lasts, 0.50)), "last-ms")
	b.ReportMetric(ms(lasts[len(lasts)-1]), "max-last-ms")
	// CPU used from release create to the last upgrade start, per release:
	// by this process (server and simulated agents) and by the whole machine
	// (this process plus the database server, and anything else running).
	b.ReportMetric(procCPUs/float64(b.N)*1000, "proc-cpu-ms")
	b.ReportMetric(sysCPUs/float64(b.N)*1000, "machine-cpu-ms")
}

// waitPolling waits until the agents have sent want polls in all, then
// briefly, for the last ones to reach the server's handler.
func waitPolling(tb testing.TB, polls *atomic.Int64, want int64) {
	tb.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for polls.Load() < want {
		if time.Now().After(deadline) {
			tb.Fatalf("agents sent %d polls, want %d", polls.Load(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
}

// sysBusy returns the CPU seconds the whole machine spent busy since boot
// (all of /proc/stat's cpu line but idle and iowait).
func sysBusy(tb testing.TB) float64 {
	tb.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		tb.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var busy float64
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseFloat(f, 64)
		if i != 3 && i != 4 && i < 8 { // idle, iowait; guest time is counted in user
			busy += v
		}
	}
	return busy / 100
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
