package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/release"
)

// loudReporter is a reporter of an upgrade whose first step printed a
// 1.2 MB line and twenty more 100 kB each in long lines of char c; the last
// step failed with a long error.
func loudReporter(c string) *reporter {
	r := &reporter{steps: []api.Step{{Name: "hook:one", Status: "ok"}}, logs: []*stepLog{{}}, taken: []bool{false}}
	r.event(release.Event{Kind: release.EventOutput, Step: "hook:one", Line: strings.Repeat(c, 1200000)})
	r.event(release.Event{Kind: release.EventOutput, Step: "hook:one", Line: "one-done"})
	for i := range 20 {
		step := fmt.Sprintf("hook:loud%02d", i)
		r.steps = append(r.steps, api.Step{Name: step, Status: "ok"})
		r.logs = append(r.logs, &stepLog{})
		r.taken = append(r.taken, false)
		for j := range 200 {
			r.logs[i+1].add(fmt.Sprintf("%s line %d %s", step, j, strings.Repeat(c, 480)))
		}
		r.logs[i+1].add(step + "-done")
	}
	r.steps[20].Status = "failed"
	r.logs[20].add("error: " + clipError(strings.Repeat("e", 100000)+" the cause"))
	r.end(fmt.Errorf("step hook:loud19: %s", strings.Repeat("x", 50000)))
	return r
}

// TestReportBounded: a 1.2 MB line and twenty steps of 100 kB make a report
// under maxReport that still ends each step with its last line, keeps the
// failure, and says what it cut; also when every byte needs escaping.
func TestReportBounded(t *testing.T) {
	for _, c := range []string{"a", "<"} {
		t.Run(c, func(t *testing.T) {
			rep, _ := loudReporter(c).snapshot()
			b, err := json.Marshal(rep)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > maxReport {
				t.Fatalf("report is %d bytes, over %d", len(b), maxReport)
			}
			if len(rep.Error) > maxError+100 || !strings.HasPrefix(rep.Error, "step hook:loud19") {
				t.Errorf("error text (%d bytes) not bounded or lost its start: %.80s", len(rep.Error), rep.Error)
			}
			one := rep.Steps[0].Log
			if c == "a" && !strings.Contains(one, "[truncated 1195904 bytes]") || !strings.HasSuffix(one, "one-done\n") {
				t.Errorf("the long line's step: %d bytes, ends %q", len(one), one[max(0, len(one)-100):])
			}
			for _, s := range rep.Steps[1:20] {
				if !strings.HasSuffix(s.Log, s.Name+"-done\n") || !strings.HasPrefix(s.Log, "… [truncated ") {
					t.Errorf("step %s lost its last line or the marker: %d bytes, ends %q", s.Name, len(s.Log), s.Log[max(0, len(s.Log)-100):])
				}
			}
			if failed := rep.Steps[20].Log; !strings.HasSuffix(failed, "the cause\n") || len(failed) < 32<<10 {
				t.Errorf("the failed step kept %d bytes, ends %q", len(failed), failed[max(0, len(failed)-100):])
			}
		})
	}
}

// TestFinishDropsRefusedReport: a final report the server refuses with a
// 4xx (here 413) is sent once and dropped, not retried forever; a 429 is
// retried.
func TestFinishDropsRefusedReport(t *testing.T) {
	for _, tc := range []struct {
		code      int
		wantCalls int64
	}{{http.StatusRequestEntityTooLarge, 1}, {http.StatusBadRequest, 1}, {http.StatusTooManyRequests, 3}} {
		t.Run(fmt.Sprint(tc.code), func(t *testing.T) {
			var calls atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
				_, _ = io.Copy(io.Discard, req.Body)
				if calls.Add(1) < 3 {
					http.Error(w, `{"error":"no"}`, tc.code)
				}
			}))
			t.Cleanup(srv.Close)
			c, err := api.NewClient(srv.URL, "tok", "")
			if err != nil {
				t.Fatal(err)
			}
			a := &Agent{MaxBackoff: 10 * time.Millisecond}
			r := &reporter{agent: a, client: c, id: 1}
			r.end(nil)
			done := make(chan struct{})
			go func() { r.finish(context.Background(), time.Time{}); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Fatalf("finish still retrying after %d calls", calls.Load())
			}
			if got := calls.Load(); got != tc.wantCalls {
				t.Errorf("server saw %d reports, want %d", got, tc.wantCalls)
			}
		})
	}
}
