package server_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/server"
	"github.com/drover/drover/internal/testenv/servertest"
)

// BenchmarkParkedLongPoll measures what one agent's parked long-poll
// costs the server: its goroutines' stacks and its heap, in bytes per
// connection (stack-B/conn, heap-B/conn), with
// DROVER_BENCH_PARKED (2,000) agents waiting at once. The clients are raw
// loopback connections with no goroutine of their own in this process, so
// what grows is the server's. The 10,000-agent figure in bench/ is this
// times 10,000 plus the runtime's own.
func BenchmarkParkedLongPoll(b *testing.B) {
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("DROVER_BENCH_PARKED")); err == nil && v > 0 {
		n = v
	}
	var srvInside *server.Server
	srv := servertest.Start(b, servertest.Options{Set: func(s *server.Server) {
		s.JoinRate, s.JoinRateTotal = 0, 0
		s.MaxWait = 10 * time.Minute
		srvInside = s
	}})
	// waiting counts the long-polls waiting: parked off net/http, or in
	// their handler's goroutine where they cannot park.
	waiting := func() int { return server.Parked(srvInside) + goroutinesIn("(*Server).desired") }
	ctx := context.Background()
	admin, err := api.NewClient(srv.URL, srv.Admin, "")
	if err != nil {
		b.Fatal(err)
	}
	anon, _ := api.NewClient(srv.URL, "", "")
	tokens := make([]string, n)
	var version int64
	for i := range tokens {
		jt, err := admin.CreateJoinToken(ctx, api.CreateJoinToken{Apps: []string{"hello"}})
		if err != nil {
			b.Fatal(err)
		}
		node := fmt.Sprintf("n%05d", i)
		j, err := anon.Join(ctx, api.Join{JoinToken: jt.Token, Node: node, Hostname: node, Apps: []api.NodeApp{{App: "hello", Env: "demo", Roles: []string{"web"}}}})
		if err != nil {
			b.Fatal(err)
		}
		tokens[i] = j.Token
		if i == 0 {
			c, _ := api.NewClient(srv.URL, j.Token, "")
			d, err := c.Desired(ctx, -1, 0)
			if err != nil {
				b.Fatal(err)
			}
			version = d.Version
		}
	}
	for range b.N {
		before := memNow()
		conns := make([]net.Conn, n)
		for i, tok := range tokens {
			c, err := net.Dial("tcp", srv.Addr)
			if err != nil {
				b.Fatal(err)
			}
			conns[i] = c
			w := bufio.NewWriter(c)
			fmt.Fprintf(w, "GET %s/agents/desired?version=%d&wait=5m HTTP/1.1\r\nHost: drover\r\nAuthorization: Bearer %s\r\nUser-Agent: drover-agent\r\n\r\n", api.Prefix, version, tok)
			if err := w.Flush(); err != nil {
				b.Fatal(err)
			}
		}
		deadline := time.Now().Add(time.Minute)
		for waiting() < n {
			if time.Now().After(deadline) {
				for _, c := range conns { // a long-poll answered at once says why
					_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
					buf := make([]byte, 300)
					if k, _ := c.Read(buf); k > 0 {
						b.Logf("answered: %q", buf[:k])
						break
					}
				}
				b.Fatalf("only %d of %d long-polls parked", waiting(), n)
			}
			time.Sleep(20 * time.Millisecond)
		}
		parked := memNow()
		b.ReportMetric(float64(parked.StackInuse-before.StackInuse)/float64(n), "stack-B/conn")
		b.ReportMetric(float64(int64(parked.HeapInuse)-int64(before.HeapInuse))/float64(n), "heap-B/conn")
		b.ReportMetric(float64(parked.NumGoroutine-before.NumGoroutine)/float64(n), "goroutines/conn")
		for _, c := range conns {
			c.Close()
		}
		// A parked long-poll whose agent hung up stays until its wait
		// ends (it is not read); those in goroutines end now.
		for goroutinesIn("(*Server).desired") > 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

type memSample struct {
	runtime.MemStats
	NumGoroutine int
}

// memNow collects garbage twice (the second also shrinks the stacks the
// first found oversized) and reads the runtime's figures.
func memNow() memSample {
	runtime.GC()
	runtime.GC()
	var m memSample
	runtime.ReadMemStats(&m.MemStats)
	m.NumGoroutine = runtime.NumGoroutine()
	return m
}
