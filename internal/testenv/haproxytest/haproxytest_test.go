package haproxytest_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/haproxytest"
)

// TestStartServesAndChecks: the frontend reaches the backend server, a
// server whose health check fails goes DOWN, and the runtime socket takes
// admin commands.
func TestStartServesAndChecks(t *testing.T) {
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("good")) }))
	t.Cleanup(good.Close)
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }))
	t.Cleanup(bad.Close)
	hp := haproxytest.Start(t, haproxytest.Options{TCPSocket: true, Servers: []haproxytest.Server{
		{Name: "good", Addr: strings.TrimPrefix(good.URL, "http://")},
		{Name: "bad", Addr: strings.TrimPrefix(bad.URL, "http://")},
	}})
	hp.WaitStatus(t, "bad", "DOWN", 5*time.Second)
	hp.WaitStatus(t, "good", "UP", 5*time.Second)
	for i := 0; i < 4; i++ {
		code, body, err := hp.Get("/")
		if err != nil || code != 200 || body != "good" {
			t.Fatalf("GET %s: %d %q %v", hp.URL, code, body, err)
		}
	}
	hp.Command(t, "set server app/good state drain")
	hp.WaitStatus(t, "good", "DRAIN", 5*time.Second)
	if !strings.HasPrefix(hp.TCPSocket, "tcp:127.0.0.1:") {
		t.Errorf("TCPSocket = %q", hp.TCPSocket)
	}
}

// TestStatsAndStates: show stat and show servers state are read per
// server, and a drained server shows as drained in both.
func TestStatsAndStates(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	t.Cleanup(app.Close)
	addr := strings.TrimPrefix(app.URL, "http://")
	hp := haproxytest.Start(t, haproxytest.Options{Servers: []haproxytest.Server{{Name: "s1", Addr: addr}, {Name: "s2", Addr: addr}}})
	hp.WaitServers(t, 5*time.Second, "both serving", haproxytest.Stat.Serving)
	if st := hp.Stats(t); len(st) != 2 {
		t.Fatalf("stats: %+v", st)
	}
	if s := hp.States(t); len(s) != 2 || s["s1"].Out() || s["s2"].Out() {
		t.Fatalf("states with both UP: %v", s)
	}
	hp.Command(t, "set server app/s2 state drain")
	if st := hp.Stats(t)["s2"]; st.Serving() {
		t.Errorf("drained s2 serving: %+v", st)
	}
	s := hp.States(t)
	if !s["s2"].Drained() || !s["s2"].Out() || s["s1"].Out() {
		t.Errorf("after draining s2: %v", s)
	}
	if hp.Retries(t) != 0 {
		t.Errorf("retries %d with no failure", hp.Retries(t))
	}
}
