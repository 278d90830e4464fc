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
