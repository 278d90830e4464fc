package api

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// hostile starts a server whose every answer is h, stopped with the test.
func hostile(t *testing.T, h http.HandlerFunc) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := NewClient(srv.URL, "tok", "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// within runs call and fails the test unless it returns within limit.
func within(t *testing.T, limit time.Duration, call func() error) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- call() }()
	select {
	case err := <-done:
		return time.Since(start), err
	case <-time.After(limit):
		t.Fatalf("the call did not return within %s", limit)
		return 0, nil
	}
}

// trickle sends headers and then one byte every 50ms until the client goes.
func trickle(w http.ResponseWriter, r *http.Request) {
	w.WriteHeader(http.StatusOK)
	for {
		if _, err := w.Write([]byte(" ")); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// flood sends an endless JSON string until the client goes or 100 MB.
func flood(w http.ResponseWriter, r *http.Request) {
	chunk := []byte(strings.Repeat("x", 1<<20))
	_, _ = w.Write([]byte(`{"version":1,"apps":"`))
	for range 100 {
		if _, err := w.Write(chunk); err != nil {
			return
		}
	}
}

// TestClientHostileServer: a server that answers nothing, trickles its
// answer forever or sends 100 MB makes every call fail in bounded time
// with an error saying so.
func TestClientHostileServer(t *testing.T) {
	silent := func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		call    func(*Client) error
		want    error
		msg     string
	}{
		{"silent", silent, func(c *Client) error { _, err := c.Status(context.Background(), "a", ""); return err }, ErrTimeout, "did not answer GET /api/v1/status within 1s"},
		{"trickle", trickle, func(c *Client) error { _, err := c.Status(context.Background(), "a", ""); return err }, ErrTimeout, "did not answer GET /api/v1/status within 1s"},
		{"trickle long-poll", trickle, func(c *Client) error { _, err := c.Desired(context.Background(), 1, time.Second); return err }, ErrTimeout, "within 1.5s"},
		{"flood", flood, func(c *Client) error { _, err := c.Upgrades(context.Background(), "a", ""); return err }, ErrTooLarge, "is over 67108864 bytes"},
		{"flood agent", flood, func(c *Client) error { _, err := c.Desired(context.Background(), 1, 0); return err }, ErrTooLarge, "is over 4194304 bytes"},
		{"flood report", flood, func(c *Client) error { return c.Report(context.Background(), 1, Report{}) }, ErrTooLarge, "POST /api/v1/upgrades/1/report is over"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := hostile(t, tc.handler)
			c.Timeout, c.LongPollMargin = time.Second, 500*time.Millisecond
			if tc.want == ErrTooLarge {
				c.Timeout = 30 * time.Second // reading 64 MiB under -race on a busy machine
			}
			took, err := within(t, 45*time.Second, func() error { return tc.call(c) })
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("after %s: err = %v, want %v saying %q", took, err, tc.want, tc.msg)
			}
			t.Logf("%s: %v", took.Round(time.Millisecond), err)
		})
	}
}

// TestClientLongPollGetsItsWait: a long-poll whose wait is longer than the
// client's timeout is not cut short; the margin covers a server that
// answers at the end of the wait.
func TestClientLongPollGetsItsWait(t *testing.T) {
	c := hostile(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			return
		case <-time.After(1500 * time.Millisecond):
		}
		_, _ = w.Write([]byte(`{"version":7}`))
	})
	c.Timeout = 500 * time.Millisecond
	d, err := c.Desired(context.Background(), 1, time.Second)
	if err != nil || d.Version != 7 {
		t.Fatalf("Desired = %+v, %v; want version 7", d, err)
	}
}
