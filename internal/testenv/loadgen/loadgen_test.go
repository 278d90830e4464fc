package loadgen

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// app answers like the example app: its release on a line of its own.
func app(release string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "hello from drover's example app\nrelease: %s\npid: 1\n", release)
	}
}

// TestHealthyServer: every request answered, counted once, with its
// release, latencies recorded; the run ends at MaxRequests; half the
// workers reuse their connection and half open one per request.
func TestHealthyServer(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(app("20260101-a"))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	res := Start(context.Background(), Options{URL: srv.URL, Workers: 4, MaxRequests: 200, MaxDuration: 30 * time.Second}).Wait()
	if res.Total != 200 || res.OK != 200 || res.Failed() != 0 {
		t.Fatalf("healthy server: %s", res)
	}
	if res.Releases["20260101-a"] != 200 || len(res.Releases) != 1 {
		t.Errorf("releases %v, want 200 of 20260101-a", res.Releases)
	}
	if res.Ended != "max requests" {
		t.Errorf("ended %q", res.Ended)
	}
	if len(res.Latencies) != 200 || res.Percentile(0.5) <= 0 || res.Percentile(0.5) > res.Percentile(0.99) {
		t.Errorf("latencies: %d samples, p50 %s p99 %s", len(res.Latencies), res.Percentile(0.5), res.Percentile(0.99))
	}
	// Two new-connection workers open one connection per request, the two
	// keep-alive workers one each (which of them sends more varies).
	if n := conns.Load(); n < 10 || n > 190 {
		t.Errorf("%d connections for 200 requests, want a mix of new and kept-alive ones", n)
	}
}

// TestRunEndsOnItsOwn: without Stop the run ends at MaxRequests and
// closes Done.
func TestRunEndsOnItsOwn(t *testing.T) {
	srv := httptest.NewServer(app("a"))
	defer srv.Close()
	run := Start(context.Background(), Options{URL: srv.URL, Workers: 3, MaxRequests: 30, MaxDuration: 30 * time.Second})
	select {
	case <-run.Done():
	case <-time.After(20 * time.Second):
		t.Fatal("run of 30 requests did not end")
	}
	if res := run.Stop(); res.Total != 30 || res.Ended != "max requests" {
		t.Errorf("run ended %q after %d requests, want max requests after 30", res.Ended, res.Total)
	}
}

// TestFailingServer: a server that answers 503 to every 4th request and
// drops the connection of every 7th: both show as failures, by kind,
// with examples; the others still count as ok.
func TestFailingServer(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := n.Add(1)
		switch {
		case i%7 == 0:
			c, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				c.Close()
			}
		case i%4 == 0:
			http.Error(w, "no server available", http.StatusServiceUnavailable)
		default:
			app("a")(w, r)
		}
	}))
	defer srv.Close()

	res := Start(context.Background(), Options{URL: srv.URL, Workers: 2, MaxRequests: 100, MaxDuration: 30 * time.Second}).Wait()
	if res.Total != 100 {
		t.Fatalf("total %d, want 100: %s", res.Total, res)
	}
	if res.Failures[Non2xx] == 0 || res.Status[503] != res.Failures[Non2xx] {
		t.Errorf("non-2xx %d, by status %v; want every 4th request as a 503", res.Failures[Non2xx], res.Status)
	}
	if res.Failures[ConnError] == 0 {
		t.Errorf("no connection errors, want every 7th request dropped: %s", res)
	}
	if res.OK+res.Failed() != res.Total || res.OK < 50 {
		t.Errorf("ok %d + failed %d != total %d", res.OK, res.Failed(), res.Total)
	}
	if len(res.Examples) == 0 || len(res.Examples) > maxExamples {
		t.Fatalf("%d examples", len(res.Examples))
	}
	s := res.String()
	if !strings.Contains(s, "503 Service Unavailable: no server available") && !strings.Contains(s, "connection error") {
		t.Errorf("summary shows no example failure:\n%s", s)
	}
	if res.Releases["a"] != res.OK {
		t.Errorf("releases %v, want one per ok answer (%d)", res.Releases, res.OK)
	}
}

// TestRefusedAndTimeout: nothing listening is a connection error; an
// answer slower than Timeout is a timeout.
func TestRefusedAndTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + l.Addr().String() + "/"
	l.Close()
	res := Start(context.Background(), Options{URL: url, Workers: 2, MaxRequests: 10, MaxDuration: 30 * time.Second}).Wait()
	if res.Failures[ConnError] != 10 || res.OK != 0 {
		t.Errorf("refused: %s", res)
	}

	release := make(chan struct{})
	var once sync.Once
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer once.Do(func() { close(release) }) // before Close, which waits for handlers
	res = Start(context.Background(), Options{URL: slow.URL, Workers: 2, MaxRequests: 4, Timeout: 100 * time.Millisecond, MaxDuration: 30 * time.Second}).Wait()
	if res.Failures[Timeout] != 4 {
		t.Errorf("slow server: %s", res)
	}
}

// TestStopAndMaxDuration: Stop ends a run at once; MaxDuration ends one
// that nobody stops.
func TestStopAndMaxDuration(t *testing.T) {
	srv := httptest.NewServer(app("a"))
	defer srv.Close()
	run := Start(context.Background(), Options{URL: srv.URL, Workers: 2, Pause: 5 * time.Millisecond, MaxDuration: time.Minute})
	deadline := time.Now().Add(10 * time.Second)
	for run.Snapshot().Total < 5 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	began := time.Now()
	res := run.Stop()
	if res.Ended != "stopped" || res.Total < 5 || res.Failed() != 0 || time.Since(began) > 5*time.Second {
		t.Errorf("stopped run: %s (stop took %s)", res, time.Since(began))
	}
	if again := run.Stop(); again.Total != res.Total {
		t.Errorf("second Stop: %d requests, first %d", again.Total, res.Total)
	}

	began = time.Now()
	run = Start(context.Background(), Options{URL: srv.URL, Workers: 1, Pause: 10 * time.Millisecond, MaxDuration: 300 * time.Millisecond})
	select {
	case <-run.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("run did not end at MaxDuration")
	}
	res = run.Stop()
	if res.Ended != "max duration" || time.Since(began) < 300*time.Millisecond || res.Failed() != 0 || res.Total == 0 {
		t.Errorf("bounded run: %s", res)
	}
}

// TestStopCountsRequestsInFlight: Stop lets the request in flight finish
// and counts it (a deploy's last moments are not left unobserved); the end
// of the caller's context cuts it short and leaves it out.
func TestStopCountsRequestsInFlight(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case entered <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		http.Error(w, "restarting", http.StatusBadGateway)
	}))
	defer srv.Close()
	defer once.Do(func() { close(release) })

	run := Start(context.Background(), Options{URL: srv.URL, Workers: 1, MaxDuration: 30 * time.Second})
	<-entered
	stopped := make(chan Result, 1)
	go func() { stopped <- run.Stop() }()
	select {
	case res := <-stopped:
		t.Fatalf("Stop returned with a request in flight: %s", res)
	case <-time.After(100 * time.Millisecond):
	}
	once.Do(func() { close(release) })
	res := <-stopped
	if res.Total != 1 || res.Status[502] != 1 || res.Ended != "stopped" {
		t.Errorf("the request in flight at Stop: %s", res)
	}

	ctx, cancel := context.WithCancel(context.Background())
	release2 := make(chan struct{})
	defer close(release2)
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case entered <- struct{}{}:
		default:
		}
		select {
		case <-release2:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	run = Start(ctx, Options{URL: slow.URL, Workers: 1, MaxDuration: 30 * time.Second})
	<-entered
	cancel()
	if res := run.Wait(); res.Total != 0 || res.Ended != "context canceled" {
		t.Errorf("a request cut short by the context: %s", res)
	}
}

// TestRateIsAnOpenLoop: with Rate, slow answers do not hold back the
// requests that follow: 1 s at 200/s against a server that answers in
// 100 ms makes about 200 requests, where one closed-loop worker makes 10.
func TestRateIsAnOpenLoop(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(100 * time.Millisecond):
		case <-r.Context().Done():
		}
		app("a")(w, r)
	}))
	defer srv.Close()
	res := Start(context.Background(), Options{URL: srv.URL, Workers: 64, Rate: 200, MaxDuration: time.Second}).Wait()
	if res.Ended != "max duration" || res.Total < 100 || res.Total > 230 || res.Failed() != 0 {
		t.Errorf("open loop at 200/s for 1s: %s", res)
	}
	closed := Start(context.Background(), Options{URL: srv.URL, Workers: 1, MaxDuration: time.Second}).Wait()
	if closed.Total > 12 {
		t.Errorf("one closed-loop worker made %d requests of 100 ms in 1 s", closed.Total)
	}
}
