package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/server"
)

func newLimited(t *testing.T, set func(*server.Server)) *env {
	return startServer(t, serverOpts{set: set})
}

// TestSlowBodyCutOff: a join whose body trickles in a byte at a time is cut
// off at BodyTimeout, not held for as long as the client keeps trickling.
func TestSlowBodyCutOff(t *testing.T) {
	const bodyTimeout = 500 * time.Millisecond
	l := newLimited(t, func(s *server.Server) { s.BodyTimeout = bodyTimeout })
	conn, err := net.Dial("tcp", l.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	start := time.Now()
	fmt.Fprintf(conn, "POST /api/v1/agents/join HTTP/1.1\r\nHost: drover\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() { // one byte every 50ms, for at most 10s
		defer close(trickled)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for range 200 {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := conn.Write([]byte(" ")); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-trickled })
	_ = conn.SetReadDeadline(time.Now().Add(8 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	elapsed := time.Since(start)
	if err != nil {
		var ne net.Error
		if ok := asNetErr(err, &ne); ok && ne.Timeout() {
			t.Fatalf("a trickling body held the connection for %s (BodyTimeout %s)", elapsed.Round(time.Millisecond), bodyTimeout)
		}
		t.Logf("connection closed without an answer after %s: %v", elapsed, err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("trickling body answered %d %s, want 408", resp.StatusCode, b)
		}
		t.Logf("answered after %s: %d %s", elapsed.Round(time.Millisecond), resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if elapsed > bodyTimeout+2*time.Second {
		t.Fatalf("cut off after %s, want about BodyTimeout %s", elapsed, bodyTimeout)
	}
}

func asNetErr(err error, ne *net.Error) bool {
	e, ok := err.(net.Error)
	if ok {
		*ne = e
	}
	return ok
}

// TestJoinRateLimited: join attempts past the per-address rate, and past
// the total rate, are answered 429 with Retry-After.
func TestJoinRateLimited(t *testing.T) {
	attempt := func(l *env) *http.Response {
		t.Helper()
		body := `{"join_token":"drv_join_guess","node":"web1","hostname":"h","agent_version":"1","apps":[{"app":"hello","env":"demo"}]}`
		resp, err := http.Post(l.url+"/api/v1/agents/join", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	for _, tc := range []struct {
		name string
		set  func(*server.Server)
	}{
		{"per address", func(s *server.Server) { s.JoinRate, s.JoinBurst = 0.1, 3 }},
		{"total", func(s *server.Server) { s.JoinRateTotal, s.JoinBurstTotal = 0.1, 3 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLimited(t, tc.set)
			for i := range 3 {
				if resp := attempt(l); resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("attempt %d within the burst: %d, want 401 (unknown token)", i+1, resp.StatusCode)
				}
			}
			resp := attempt(l)
			if resp.StatusCode != http.StatusTooManyRequests {
				t.Fatalf("attempt past the burst: %d, want 429", resp.StatusCode)
			}
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
				t.Fatalf("429 without a Retry-After in seconds: %q", resp.Header.Get("Retry-After"))
			}
			// Other routes are not limited.
			if code, body := l.raw("GET", "/api/v1/nodes", l.admin, nil); code != 200 {
				t.Fatalf("admin request after join limit: %d %s", code, body)
			}
		})
	}
}

// TestLongPollOutlivesBodyTimeout: the long-poll waits its full wait even
// when body and write timeouts are much shorter, and answers.
func TestLongPollOutlivesBodyTimeout(t *testing.T) {
	l := newLimited(t, func(s *server.Server) {
		s.BodyTimeout, s.WriteTimeout, s.MaxWait = 200*time.Millisecond, 200*time.Millisecond, 10*time.Second
	})
	ctx := context.Background()
	agent := l.join("web1")
	d, err := agent.Desired(ctx, -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	const wait = 1500 * time.Millisecond
	start := time.Now()
	d2, err := agent.Desired(ctx, d.Version, wait)
	elapsed := time.Since(start)
	if err != nil {
		t.Fatalf("long-poll of %s with 200ms body and write timeouts: %v after %s", wait, err, elapsed)
	}
	if elapsed < wait || d2.Version != d.Version {
		t.Fatalf("long-poll answered after %s with version %d, want the full %s and version %d", elapsed, d2.Version, wait, d.Version)
	}
	// And a release during a long-poll still wakes it.
	got := make(chan error, 1)
	go func() { _, err := agent.Desired(ctx, d.Version, 5*time.Second); got <- err }()
	releaseWakes(t, l.client(l.admin), got)
}

// TestMaxConns: past MaxConns, a new connection waits until one closes.
func TestMaxConns(t *testing.T) {
	l := newLimited(t, func(s *server.Server) { s.MaxConns = 2 })
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", l.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		// Prove the server took it: one request answered, kept alive.
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: drover\r\n\r\n")
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("connection %d within the cap: %v", len(held)+1, err)
		}
		resp.Body.Close()
		held = append(held, c)
	}
	third := &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	if resp, err := third.Get(l.url + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatalf("a third connection was served with MaxConns 2: %d", resp.StatusCode)
	}
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := third.Get(l.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection served after one of the two closed: %v", err)
		}
	}
}
