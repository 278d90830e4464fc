package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/server"
	"github.com/drover/drover/internal/testenv/servertest"
)

// parkingServer starts a server (servertest) and returns it with the
// *server.Server under it, to count its parked long-polls.
func parkingServer(t *testing.T, set func(*server.Server)) (*env, *server.Server) {
	t.Helper()
	var srv *server.Server
	e := startServer(t, serverOpts{set: func(s *server.Server) {
		s.MaxWait = 10 * time.Second
		if set != nil {
			set(s)
		}
		srv = s
	}})
	return e, srv
}

// countDials makes c dial through a transport that counts its TCP dials.
func countDials(c *api.Client, tlsConfig *tls.Config) *atomic.Int32 {
	var n atomic.Int32
	d := &net.Dialer{}
	c.HTTP = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			n.Add(1)
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig:   tlsConfig,
		ForceAttemptHTTP2: true, // as the agent's client (api.NewClient)
	}}
	return &n
}

// waitParked waits until srv holds n parked long-polls and no handler
// goroutine waits: parked long-polls cost none.
func waitParked(t *testing.T, srv *server.Server, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d parked long-polls", n), func() bool {
		return server.Parked(srv) == n && goroutinesIn("(*Server).desired") == 0
	})
}

func longPollRequest(token string, version int64, wait time.Duration) string {
	return fmt.Sprintf("GET %s/agents/desired?version=%d&wait=%s HTTP/1.1\r\nHost: drover\r\nAuthorization: Bearer %s\r\n\r\n", api.Prefix, version, wait, token)
}

// readAnswer reads one response from br and returns it with its body.
func readAnswer(t *testing.T, c net.Conn, br *bufio.Reader) (*http.Response, []byte) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read answer's body: %v", err)
	}
	return resp, b
}

// TestParkedLongPollKeepsConnection: a long-poll parks without a
// goroutine, is answered on a change and at its wait's end, and the
// agent's next requests go over the same TCP connection.
func TestParkedLongPollKeepsConnection(t *testing.T) {
	e, srv := parkingServer(t, nil)
	ctx := context.Background()
	agent := e.join("web1")
	dials := countDials(agent, nil)
	d, err := agent.Desired(ctx, -1, 0)
	if err != nil {
		t.Fatal(err)
	}

	const wait = 300 * time.Millisecond
	start := time.Now()
	d3, err := agent.Desired(ctx, d.Version, wait)
	if err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(start); elapsed < wait || d3.Version != d.Version {
		t.Fatalf("long-poll of %s answered after %s with version %d, want its whole wait and version %d", wait, elapsed, d3.Version, d.Version)
	}

	got := make(chan *api.Desired, 1)
	go func() {
		d2, err := agent.Desired(ctx, d.Version, 10*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- d2
	}()
	waitParked(t, srv, 1)
	rel, err := e.client(e.admin).CreateRelease(ctx, api.CreateRelease{App: "hello", Env: "demo", Spec: "tag:v1", Commit: sha})
	if err != nil {
		t.Fatal(err)
	}
	var changed *api.Desired
	select {
	case changed = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("parked long-poll not answered within 5s of a release")
	}
	if changed == nil || changed.Version == d.Version {
		t.Fatalf("woken long-poll answered %+v, want a version other than %d (release %d)", changed, d.Version, rel.Release.ID)
	}
	if server.Parked(srv) != 0 {
		t.Fatalf("%d long-polls still parked after their answers", server.Parked(srv))
	}
	if _, err := agent.Desired(ctx, -1, 0); err != nil {
		t.Fatal(err)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("the agent dialled %d connections, want 1 kept alive through its long-polls", n)
	}
}

// TestReleaseWakesManyParked: one release wakes every long-poll parked
// on its environment, through the workers' queue, and each is answered
// with the new desired state.
func TestReleaseWakesManyParked(t *testing.T) {
	e, srv := parkingServer(t, func(s *server.Server) { s.JoinRate, s.JoinRateTotal = 0, 0 })
	ctx := context.Background()
	const n = 40
	type poll struct {
		c       net.Conn
		br      *bufio.Reader
		version int64 // the agent's before the release
	}
	polls := make([]poll, n)
	for i := range polls {
		agent, d, c := rawAgent(t, e, fmt.Sprintf("web%d", i))
		if _, err := io.WriteString(c, longPollRequest(agent.Token, d.Version, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		polls[i] = poll{c, bufio.NewReader(c), d.Version}
	}
	waitParked(t, srv, n)
	if _, err := e.client(e.admin).CreateRelease(ctx, api.CreateRelease{App: "hello", Env: "demo", Spec: "tag:v1", Commit: sha}); err != nil {
		t.Fatal(err)
	}
	for i, p := range polls {
		resp, body := readAnswer(t, p.c, p.br)
		var d api.Desired
		if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &d) != nil || d.Version == p.version {
			t.Fatalf("long-poll %d after the release: %s %q, want a version other than %d", i+1, resp.Status, body, p.version)
		}
	}
}

// TestParkedAnswerOnTheWire: a parked long-poll's answer is a plain
// HTTP/1.1 response with the handler's headers and JSON, and a request
// the client sent behind it (pipelined, so net/http had read it already
// when the long-poll parked) is answered next on the same connection.
func TestParkedAnswerOnTheWire(t *testing.T) {
	e, srv := parkingServer(t, nil)
	agent, d, c := rawAgent(t, e, "web1")
	// One write, so both requests reach the server's buffer together.
	second := fmt.Sprintf("GET %s/agents/desired?version=-1&wait=0s HTTP/1.1\r\nHost: drover\r\nAuthorization: Bearer %s\r\n\r\n", api.Prefix, agent.Token)
	if _, err := io.WriteString(c, longPollRequest(agent.Token, d.Version, 200*time.Millisecond)+second); err != nil {
		t.Fatal(err)
	}
	waitParked(t, srv, 1)
	br := bufio.NewReader(c)
	for i, what := range []string{"the parked long-poll", "the pipelined request"} {
		resp, body := readAnswer(t, c, br)
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 || resp.ProtoMinor != 1 {
			t.Fatalf("%s: %s %s", what, resp.Proto, resp.Status)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q", what, ct)
		}
		if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
			t.Errorf("%s: Content-Length %q for %d bytes", what, cl, len(body))
		}
		if _, err := http.ParseTime(resp.Header.Get("Date")); err != nil {
			t.Errorf("%s: Date %q: %v", what, resp.Header.Get("Date"), err)
		}
		var got api.Desired
		if err := json.Unmarshal(body, &got); err != nil || got.Version != d.Version || !strings.HasSuffix(string(body), "}\n") {
			t.Fatalf("%s %d answered %q (%v), want writeJSON's desired state at version %d", what, i+1, body, err, d.Version)
		}
		if resp.Close {
			t.Fatalf("%s: the server closes the connection", what)
		}
	}
}

// TestLongPollNotParked: a long-poll whose connection is not kept alive
// (Connection: close, HTTP/1.0) is not taken from net/http: it waits in
// its goroutine, is answered at its wait's end, and its connection
// closes as asked.
func TestLongPollNotParked(t *testing.T) {
	e, srv := parkingServer(t, nil)
	agent := e.join("web1")
	d, err := agent.Desired(context.Background(), -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, proto, header string }{
		{"Connection: close", "HTTP/1.1", "Connection: close\r\n"},
		{"HTTP/1.0", "HTTP/1.0", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", e.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "GET %s/agents/desired?version=%d&wait=300ms %s\r\nHost: drover\r\nAuthorization: Bearer %s\r\n%s\r\n", api.Prefix, d.Version, tc.proto, agent.Token, tc.header)
			waitFor(t, "the long-poll to wait in its goroutine", func() bool { return goroutinesIn("(*Server).desired") == 1 })
			if n := server.Parked(srv); n != 0 {
				t.Fatalf("%d long-polls parked, want none", n)
			}
			br := bufio.NewReader(c)
			resp, body := readAnswer(t, c, br)
			var got api.Desired
			if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &got) != nil || got.Version != d.Version {
				t.Fatalf("answered %s %q, want the desired state at version %d", resp.Status, body, d.Version)
			}
			if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
				t.Fatalf("after the answer: %q, %v; want the connection closed", rest, err)
			}
		})
	}
}

// TestResumedConnectionWaitsIdle: after a parked answer, the connection
// may idle longer than ReadHeaderTimeout before the agent's next request
// (as on any kept-alive connection), but once a request begins, its
// headers still must arrive within ReadHeaderTimeout.
func TestResumedConnectionWaitsIdle(t *testing.T) {
	const header = 100 * time.Millisecond
	e, srv := parkingServer(t, func(s *server.Server) { s.ReadHeaderTimeout, s.IdleTimeout = header, 10*time.Second })
	agent, d, c := rawAgent(t, e, "web1")
	br := bufio.NewReader(c)
	park := func() {
		t.Helper()
		if _, err := io.WriteString(c, longPollRequest(agent.Token, d.Version, 50*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if resp, body := readAnswer(t, c, br); resp.StatusCode != http.StatusOK {
			t.Fatalf("long-poll: %s %s", resp.Status, body)
		}
	}
	park()
	time.Sleep(4 * header) // the pause under test: an agent busy between polls
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: drover\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp, body := readAnswer(t, c, br); resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
		t.Fatalf("request %s after the answer: %s %q", 4*header, resp.Status, body)
	}

	// A request begun after a pause but never finished is cut off at
	// ReadHeaderTimeout from its first byte, not left for IdleTimeout.
	park()
	waitFor(t, "the long-poll's answer to leave the lot", func() bool { return server.Parked(srv) == 0 })
	time.Sleep(2 * header)
	if _, err := io.WriteString(c, "GET /heal"); err != nil {
		t.Fatal(err)
	}
	begun := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(br) // net/http may say 408 before it closes
	if elapsed := time.Since(begun); err != nil || elapsed > 3*time.Second {
		t.Fatalf("half a request held the connection %s (read %q, %v), want it closed after about %s", elapsed, rest, err, header)
	}
}

// TestMaxConnsCountsParkedOnce: a connection holds one MaxConns slot
// while its long-poll is parked and after it is handed back, and frees it
// when it closes.
func TestMaxConnsCountsParkedOnce(t *testing.T) {
	e, srv := parkingServer(t, func(s *server.Server) { s.MaxConns = 2 })
	agent := joinClosing(t, e)
	d, err := agent.Desired(context.Background(), -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	dial := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	healthz := func(c net.Conn, br *bufio.Reader) {
		t.Helper()
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: drover\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if resp, body := readAnswer(t, c, br); resp.StatusCode != http.StatusOK {
			t.Fatalf("healthz: %s %s", resp.Status, body)
		}
	}
	third := &http.Client{Timeout: 300 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	thirdServed := func() bool {
		resp, err := third.Get(e.url + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}

	a, abr := dial()
	const wait = 500 * time.Millisecond
	if _, err := io.WriteString(a, longPollRequest(agent.Token, d.Version, wait)); err != nil {
		t.Fatal(err)
	}
	waitParked(t, srv, 1)
	b, bbr := dial()
	healthz(b, bbr)
	if server.Parked(srv) == 1 && thirdServed() {
		t.Fatal("a third connection was served while one of the two slots was parked")
	}
	if resp, body := readAnswer(t, a, abr); resp.StatusCode != http.StatusOK {
		t.Fatalf("long-poll: %s %s", resp.Status, body)
	}
	healthz(a, abr) // handed back: served within its own slot
	if thirdServed() {
		t.Fatal("a third connection was served while the handed-back one was open")
	}
	a.Close()
	waitFor(t, "a third connection to be served after the parked one closed", thirdServed)
}

// joinClosing joins node web1 over connections that close after each
// request (kept alive, they would hold MaxConns slots) and returns its
// agent client, which does the same.
func joinClosing(t *testing.T, e *env) *api.Client {
	t.Helper()
	ctx := context.Background()
	closing := func(token string) *api.Client {
		c := e.client(token)
		c.HTTP.Transport.(*http.Transport).DisableKeepAlives = true
		return c
	}
	jt, err := closing(e.admin).CreateJoinToken(ctx, api.CreateJoinToken{Apps: []string{"hello"}})
	if err != nil {
		t.Fatal(err)
	}
	j, err := closing("").Join(ctx, api.Join{JoinToken: jt.Token, Node: "web1", Hostname: "web1", Apps: []api.NodeApp{{App: "hello", Env: "demo", Roles: []string{"web"}}}})
	if err != nil {
		t.Fatal(err)
	}
	return closing(j.Token)
}

// TestHungUpParkedFreesSlot: a parked connection is not read, so an
// agent that hangs up is not noticed at once; but at its wait's end it
// leaves the lot and its MaxConns slot is free again.
func TestHungUpParkedFreesSlot(t *testing.T) {
	e, srv := parkingServer(t, func(s *server.Server) { s.MaxConns = 1 })
	agent := joinClosing(t, e)
	d, c := rawConn(t, e, agent)
	if _, err := io.WriteString(c, longPollRequest(agent.Token, d.Version, 500*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	waitParked(t, srv, 1)
	c.Close()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(e.url + "/healthz") // waits for the slot
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n := server.Parked(srv); n != 0 {
		t.Fatalf("a connection was served while the hung-up one was still parked (%d parked)", n)
	}
}

// TestParkOverTLS: over TLS with HTTP/1.1 (what `drover server
// --tls-cert` negotiates) a long-poll parks and its connection is handed
// back without a second TLS layer; with HTTP/2 it cannot be taken from
// net/http, waits in its goroutine and is still answered.
func TestParkOverTLS(t *testing.T) {
	c := servertest.SelfSigned(t)
	cert, caFile, roots := c.TLS, c.CertFile, c.Roots
	for _, tc := range []struct {
		name      string
		protos    []string
		wantProto int
		wantPark  int
	}{
		{"http/1.1", nil, 1, 1},
		{"h2", []string{"h2", "http/1.1"}, 2, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var srv *server.Server
			ts := servertest.Start(t, servertest.Options{
				Set: func(s *server.Server) { s.MaxWait = 10 * time.Second; srv = s },
				TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: tc.protos},
			})
			ctx := context.Background()
			admin, err := api.NewClient(ts.URL, ts.Admin, caFile)
			if err != nil {
				t.Fatal(err)
			}
			jt, err := admin.CreateJoinToken(ctx, api.CreateJoinToken{Apps: []string{"hello"}})
			if err != nil {
				t.Fatal(err)
			}
			anon, _ := api.NewClient(ts.URL, "", caFile)
			j, err := anon.Join(ctx, api.Join{JoinToken: jt.Token, Node: "web1", Hostname: "web1", Apps: []api.NodeApp{{App: "hello", Env: "demo", Roles: []string{"web"}}}})
			if err != nil {
				t.Fatal(err)
			}
			agent, _ := api.NewClient(ts.URL, j.Token, caFile)
			dials := countDials(agent, &tls.Config{RootCAs: roots})
			var proto atomic.Int32
			d, err := agent.Desired(ctx, -1, 0)
			if err != nil {
				t.Fatal(err)
			}
			got := make(chan error, 1)
			go func() {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s%s/agents/desired?version=%d&wait=10s", ts.URL, api.Prefix, d.Version), nil)
				req.Header.Set("Authorization", "Bearer "+j.Token)
				resp, err := agent.HTTP.Do(req)
				if err == nil {
					proto.Store(int32(resp.ProtoMajor))
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				got <- err
			}()
			// The long-poll waits parked (HTTP/1.1) or in its handler (h2);
			// a handler on its way to park counts as neither.
			waitFor(t, fmt.Sprintf("the long-poll to wait (%d parked wanted)", tc.wantPark), func() bool {
				if tc.wantPark == 1 {
					return server.Parked(srv) == 1
				}
				return goroutinesIn("(*Server).desired") == 1
			})
			if n := server.Parked(srv); n != tc.wantPark {
				t.Fatalf("%d long-polls parked, want %d", n, tc.wantPark)
			}
			releaseWakes(t, admin, got)
			if int(proto.Load()) != tc.wantProto {
				t.Fatalf("answered over HTTP/%d, want HTTP/%d", proto.Load(), tc.wantProto)
			}
			if _, err := agent.Desired(ctx, -1, 0); err != nil {
				t.Fatalf("the next request after the long-poll: %v", err)
			}
			if n := dials.Load(); n != 1 {
				t.Fatalf("the agent dialled %d connections, want 1", n)
			}
		})
	}
}

// TestShutdownClosesParked: when the server is closed, or its context
// ends, every parked connection is closed, and no goroutine of the
// server's is left behind.
func TestShutdownClosesParked(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop func(s *server.Server, hs *http.Server, cancel context.CancelFunc)
	}{
		{"Close", func(s *server.Server, hs *http.Server, _ context.CancelFunc) {
			_ = hs.Close()
			s.Close()
		}},
		{"context", func(_ *server.Server, _ *http.Server, cancel context.CancelFunc) { cancel() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := servertest.Start(t, servertest.Options{Set: func(s *server.Server) { s.MaxWait = time.Minute }})
			s, hs, cancel, served := srv.API, srv.HTTP, srv.Stop, srv.Served
			e := &env{t: t, st: srv.Store, url: srv.URL, addr: srv.Addr, admin: srv.Admin}
			ctx := context.Background()

			agent := e.join("web1")
			d, err := agent.Desired(ctx, -1, 0)
			if err != nil {
				t.Fatal(err)
			}
			var conns []net.Conn
			for range 5 {
				c, err := net.Dial("tcp", e.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if _, err := io.WriteString(c, longPollRequest(agent.Token, d.Version, time.Minute)); err != nil {
					t.Fatal(err)
				}
				conns = append(conns, c)
			}
			waitParked(t, s, len(conns))

			tc.stop(s, hs, cancel)
			for i, c := range conns {
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if n, err := c.Read(make([]byte, 1)); err != io.EOF {
					t.Fatalf("parked connection %d after the stop: read %d bytes, %v; want it closed (EOF)", i+1, n, err)
				}
			}
			_ = hs.Close()
			s.Close()
			cancel()
			<-served
			waitFor(t, "the server's goroutines to end", func() bool {
				return goroutinesWith("drover/internal/server.") == 0 && goroutinesWith("net/http.(*conn).serve") == 0
			})
		})
	}
}

// goroutinesWith counts goroutines with a frame whose name holds s.
func goroutinesWith(s string) int {
	buf := make([]byte, 1<<26)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, s) {
			n++
		}
	}
	return n
}

// rawAgent joins node, reads its desired state once and opens a raw
// connection to the server for the test to speak HTTP on.
func rawAgent(t *testing.T, e *env, node string) (*api.Client, *api.Desired, net.Conn) {
	t.Helper()
	agent := e.join(node)
	d, c := rawConn(t, e, agent)
	return agent, d, c
}

// rawConn reads agent's desired state once and opens a raw connection to
// the server for the test to speak HTTP on as agent.
func rawConn(t *testing.T, e *env, agent *api.Client) (*api.Desired, net.Conn) {
	t.Helper()
	d, err := agent.Desired(context.Background(), -1, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return d, c
}
