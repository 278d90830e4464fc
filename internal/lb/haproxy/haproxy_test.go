package haproxy_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover/drover/internal/lb"
	"github.com/drover/drover/internal/lb/haproxy"
	"github.com/drover/drover/internal/lb/lbtest"
	"github.com/drover/drover/internal/testenv/haproxytest"
)

// app is a small backend server: /healthz answers 200 while healthy, /slow
// holds its request until released.
type app struct {
	*httptest.Server
	unhealthy atomic.Bool
	release   chan struct{}
}

func startApp(t *testing.T) *app {
	a := &app{release: make(chan struct{})}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			if a.unhealthy.Load() {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		case "/slow":
			select {
			case <-a.release:
			case <-r.Context().Done():
			}
		}
	}))
	t.Cleanup(a.Close)
	t.Cleanup(func() {
		select {
		case <-a.release:
		default:
			close(a.release)
		}
	})
	return a
}

func (a *app) addr() string { return strings.TrimPrefix(a.URL, "http://") }

func startHAProxy(t *testing.T, n int) (*haproxytest.HAProxy, []*app) {
	var apps []*app
	var servers []haproxytest.Server
	for i := 0; i < n; i++ {
		a := startApp(t)
		apps = append(apps, a)
		servers = append(servers, haproxytest.Server{Name: "web" + string(rune('1'+i)), Addr: a.addr()})
	}
	return haproxytest.Start(t, haproxytest.Options{Servers: servers, TCPSocket: true}), apps
}

func TestConformanceUnixSocket(t *testing.T) {
	lbtest.Run(t, func(t *testing.T) lbtest.Fixture {
		hp, _ := startHAProxy(t, 3)
		return lbtest.Fixture{Balancer: haproxy.New(hp.Socket, hp.Backend), Members: []string{"web1", "web2", "web3"}, Kill: hp.Stop}
	})
}

func TestConformanceTCPSocket(t *testing.T) {
	lbtest.Run(t, func(t *testing.T) lbtest.Fixture {
		hp, _ := startHAProxy(t, 2)
		return lbtest.Fixture{Balancer: haproxy.New(hp.TCPSocket, hp.Backend), Members: []string{"web1", "web2"}, Kill: hp.Stop}
	})
}

// TestStates maps HAProxy's states as documented: a failing check makes a
// server unhealthy but still enabled; a drained server that fails its
// check shows "DOWN" in show stat yet is reported not enabled; a server
// going up ("DOWN 1/2") is not healthy yet; maintenance is not enabled.
func TestStates(t *testing.T) {
	hp, apps := startHAProxy(t, 2)
	b := haproxy.New(hp.Socket, hp.Backend)

	apps[1].unhealthy.Store(true)
	m := lbtest.WaitMember(t, b, "web2", 10*time.Second, func(m lb.Member) bool { return m.Detail == "DOWN" })
	if !m.Enabled || m.Healthy || m.Serving() {
		t.Errorf("web2 failing its check: %+v, want enabled, not healthy", m)
	}
	if err := b.Drain(context.Background(), "web2"); err != nil {
		t.Fatal(err)
	}
	m = lbtest.Member(t, b, "web2")
	if m.Enabled || m.Healthy || !strings.Contains(m.Detail, "drained") {
		t.Errorf("web2 drained and down: %+v, want not enabled, not healthy, detail saying drained", m)
	}
	apps[1].unhealthy.Store(false)
	if err := b.Enable(context.Background(), "web2"); err != nil {
		t.Fatal(err)
	}
	m = lbtest.WaitMember(t, b, "web2", 10*time.Second, func(m lb.Member) bool { return strings.HasPrefix(m.Detail, "DOWN 1/2") || m.Healthy })
	if strings.HasPrefix(m.Detail, "DOWN 1/2") && m.Healthy {
		t.Errorf("web2 going up: %+v, want not healthy yet", m)
	}
	lbtest.WaitMember(t, b, "web2", 10*time.Second, func(m lb.Member) bool { return m.Serving() && m.Detail == "UP" })

	hp.Command(t, "set server app/web1 state maint")
	m = lbtest.Member(t, b, "web1")
	if m.Enabled || m.Serving() || m.Detail != "MAINT" {
		t.Errorf("web1 in maintenance: %+v, want not enabled", m)
	}
	if err := b.Enable(context.Background(), "web1"); err != nil {
		t.Fatal(err)
	}
	lbtest.WaitMember(t, b, "web1", 10*time.Second, func(m lb.Member) bool { return m.Serving() })
}

// TestDrainWaitsForSessions: a drained server with a request in flight is
// Draining with Active > 0 until the request finishes, then Idle.
func TestDrainWaitsForSessions(t *testing.T) {
	hp, apps := startHAProxy(t, 1)
	b := haproxy.New(hp.Socket, hp.Backend)
	done := make(chan error, 1)
	go func() {
		code, _, err := hp.Get("/slow")
		if err == nil && code != 200 {
			err = errors.New(http.StatusText(code))
		}
		done <- err
	}()
	lbtest.WaitMember(t, b, "web1", 10*time.Second, func(m lb.Member) bool { return m.Active > 0 })
	if err := b.Drain(context.Background(), "web1"); err != nil {
		t.Fatal(err)
	}
	m := lbtest.Member(t, b, "web1")
	if !m.Draining || m.Idle() || m.Active != 1 {
		t.Errorf("drained with a request in flight: %+v, want draining, 1 active", m)
	}
	close(apps[0].release)
	if err := <-done; err != nil {
		t.Errorf("the request in flight failed: %v", err)
	}
	lbtest.WaitMember(t, b, "web1", 10*time.Second, func(m lb.Member) bool { return m.Idle() })
}

// TestErrorsNameSocketAndCommand: runtime API refusals become errors that
// say which socket and command.
func TestErrorsNameSocketAndCommand(t *testing.T) {
	hp, _ := startHAProxy(t, 1)
	err := haproxy.New(hp.Socket, "nope").Drain(context.Background(), "web1")
	if err == nil || !strings.Contains(err.Error(), hp.Socket) || !strings.Contains(err.Error(), "set server nope/web1 state drain") || !strings.Contains(err.Error(), "load_balancer.backend") {
		t.Errorf("drain in an unknown backend: %v", err)
	}
	if _, err := haproxy.New(hp.Socket, "nope").Members(context.Background()); err == nil || !strings.Contains(err.Error(), `has no backend "nope"`) {
		t.Errorf("members of an unknown backend: %v", err)
	}
	if _, err := haproxy.New(hp.Socket, "fe").Members(context.Background()); err == nil || !strings.Contains(err.Error(), `has no backend "fe"`) {
		t.Errorf("members of a frontend: %v", err)
	}
	for _, evil := range []string{"web1;shutdown frontend fe", "web1 state maint\nshow info", ""} {
		err := haproxy.New(hp.Socket, hp.Backend).Drain(context.Background(), evil)
		if !errors.Is(err, lb.ErrUnknownMember) || !strings.Contains(err.Error(), "not a HAProxy server name") {
			t.Errorf("drain of %q: %v", evil, err)
		}
	}
	if _, err := haproxy.New(hp.Socket, "app;show info").Members(context.Background()); err == nil || !strings.Contains(err.Error(), "not a HAProxy backend name") {
		t.Errorf("members of backend with a ';': %v", err)
	}
	if code, _, err := hp.Get("/"); err != nil || code != 200 {
		t.Errorf("the frontend after those calls: %d %v", code, err)
	}
	err = haproxy.New(hp.Socket, hp.Backend).Drain(context.Background(), "web9")
	if !errors.Is(err, lb.ErrUnknownMember) || !strings.Contains(err.Error(), "app") || !strings.Contains(err.Error(), "web9") {
		t.Errorf("drain of an unknown server: %v", err)
	}
}

// TestSilentSocketTimesOut: a socket that accepts and never answers (a
// wedged HAProxy, the wrong service) fails the call after Timeout.
func TestSilentSocketTimesOut(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "silent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { <-done; c.Close() }()
		}
	}()
	b := haproxy.New(sock, "app")
	b.Timeout = 300 * time.Millisecond
	start := time.Now()
	_, err = b.Members(context.Background())
	if err == nil || !strings.Contains(err.Error(), sock) || !strings.Contains(err.Error(), "show stat") {
		t.Errorf("Members on a silent socket: %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Members on a silent socket took %s, want about 300ms", took)
	}
}
