// Package loadgen sends a bounded stream of GET requests to one URL for as
// long as a test lets it, and records what a user of the site would have
// seen: how many requests failed and how (connection errors, timeouts,
// non-2xx answers, with a few examples), which releases answered (the
// example app prints "release: ID"), and how long requests took.
//
// A run is always bounded: it ends at MaxRequests requests or after
// MaxDuration (plus one request Timeout), whichever comes first, or earlier
// when the caller stops it or cancels its context.
//
//	run := loadgen.Start(ctx, loadgen.Options{URL: url, Workers: 4})
//	... deploy ...
//	res := run.Stop()
//	if res.Failed() > 0 { t.Errorf("lost requests: %s", res) }
package loadgen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults for the zero Options fields.
const (
	DefaultWorkers     = 4
	DefaultMaxRequests = 50000
	DefaultMaxDuration = 2 * time.Minute
	DefaultTimeout     = 5 * time.Second
	maxExamples        = 5
	maxBody            = 64 << 10
)

// Options say what to load and for how long at most.
type Options struct {
	// URL is fetched with GET by every worker.
	URL string
	// Workers send requests concurrently, each waiting for its answer
	// before its next; default DefaultWorkers. With Rate it is the most
	// requests in flight at once.
	Workers int
	// Rate, when positive, starts this many requests per second in all,
	// whether or not earlier ones have been answered (an open loop, as
	// users arrive): requests stuck in a load balancer's retries then do
	// not hold back the ones that would have failed meanwhile. While every
	// worker waits for an answer the pace slows. 0: each worker sends its
	// next request as soon as (Pause after) its last was answered.
	Rate float64
	// NewConnWorkers of the workers open a new connection for every
	// request; the others keep theirs alive between requests. Default half
	// of Workers (rounded down); negative: none.
	NewConnWorkers int
	// Pause is how long each worker waits between two of its requests
	// without Rate, to bound the load on a small machine; 0 sends back to
	// back.
	Pause time.Duration
	// Timeout bounds one request, from dial to the end of the body;
	// default DefaultTimeout.
	Timeout time.Duration
	// MaxRequests ends the run once this many requests were sent;
	// default DefaultMaxRequests.
	MaxRequests int
	// MaxDuration ends the run this long after Start; default
	// DefaultMaxDuration.
	MaxDuration time.Duration
}

// Kind is how a request failed.
type Kind string

// Failure kinds.
const (
	ConnError Kind = "connection error" // dial refused, reset, EOF before an answer
	Timeout   Kind = "timeout"          // no whole answer within Options.Timeout
	Non2xx    Kind = "non-2xx"          // an answer whose status is not 2xx
)

// Failure is one failed request, kept as an example.
type Failure struct {
	At     time.Duration // since the run started
	Kind   Kind
	Status int    // the HTTP status of a Non2xx failure, else 0
	Detail string // the error or "503 Service Unavailable: first line of body"
}

func (f Failure) String() string {
	return fmt.Sprintf("+%s %s: %s", f.At.Round(time.Millisecond), f.Kind, f.Detail)
}

// Result is what a run saw.
type Result struct {
	Total    int            // requests sent and finished (answered or failed)
	OK       int            // answered 2xx
	Failures map[Kind]int   // failed requests by kind
	Status   map[int]int    // non-2xx answers by status code
	Examples []Failure      // the first few failures, in order
	Releases map[string]int // "release: ID" lines of 2xx bodies: ID → count
	// Latencies holds one sample per finished request (answered or not),
	// in the order they finished.
	Latencies []time.Duration
	Elapsed   time.Duration
	// Ended says why the run ended: "stopped", "context canceled",
	// "max requests" or "max duration".
	Ended string
}

// Failed is the number of requests that did not get a 2xx answer.
func (r Result) Failed() int {
	n := 0
	for _, c := range r.Failures {
		n += c
	}
	return n
}

// ReleaseIDs returns the releases that answered, sorted.
func (r Result) ReleaseIDs() []string {
	ids := make([]string, 0, len(r.Releases))
	for id := range r.Releases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Percentile returns the q-th (0..1) latency, 0 without samples.
func (r Result) Percentile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	s := slices.Clone(r.Latencies)
	slices.Sort(s)
	i := int(q * float64(len(s)-1))
	return s[i]
}

// String is a one-line summary for test logs.
func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d requests in %s (%s): %d ok, %d failed", r.Total, r.Elapsed.Round(time.Millisecond), r.Ended, r.OK, r.Failed())
	for _, k := range []Kind{ConnError, Timeout, Non2xx} {
		if n := r.Failures[k]; n > 0 {
			fmt.Fprintf(&b, ", %d %s", n, k)
		}
	}
	fmt.Fprintf(&b, "; p50 %s p99 %s; releases %v", r.Percentile(0.5).Round(time.Microsecond), r.Percentile(0.99).Round(time.Microsecond), r.Releases)
	for _, e := range r.Examples {
		fmt.Fprintf(&b, "\n  %s", e)
	}
	return b.String()
}

// Run is a load run in progress.
type Run struct {
	stop  chan struct{} // closed by Stop or at MaxDuration: send no more requests
	pace  chan struct{} // with Rate: one value per request to start
	once  sync.Once
	done  chan struct{}
	start time.Time

	mu      sync.Mutex
	res     Result
	sent    int
	stopped bool
}

// Start begins sending requests and returns at once. The run ends at
// MaxRequests, MaxDuration, Stop or when ctx ends. Only the end of ctx
// cuts requests in flight short (and leaves them uncounted); the others
// let every request in flight finish, within Timeout, and count it.
func Start(ctx context.Context, o Options) *Run {
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.NewConnWorkers == 0 {
		o.NewConnWorkers = o.Workers / 2
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxRequests <= 0 {
		o.MaxRequests = DefaultMaxRequests
	}
	if o.MaxDuration <= 0 {
		o.MaxDuration = DefaultMaxDuration
	}
	r := &Run{stop: make(chan struct{}), done: make(chan struct{}), start: time.Now()}
	if o.Rate > 0 {
		r.pace = make(chan struct{})
		o.Pause = 0
		go r.pacer(ctx, o.Rate)
	}
	r.res = Result{Failures: map[Kind]int{}, Status: map[int]int{}, Releases: map[string]int{}}
	deadline := time.AfterFunc(o.MaxDuration, func() { r.once.Do(func() { close(r.stop) }) })
	var wg sync.WaitGroup
	for i := range o.Workers {
		keepAlive := i >= o.NewConnWorkers
		tr := &http.Transport{
			DialContext:         (&net.Dialer{Timeout: o.Timeout}).DialContext,
			DisableKeepAlives:   !keepAlive,
			MaxIdleConnsPerHost: 1,
			// A load generator measures the site, not a proxy of this machine.
			Proxy: nil,
		}
		client := &http.Client{Transport: tr, Timeout: o.Timeout}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer tr.CloseIdleConnections()
			r.work(ctx, client, o)
		}()
	}
	go func() {
		wg.Wait()
		deadline.Stop()
		r.mu.Lock()
		r.res.Elapsed = time.Since(r.start)
		switch {
		case r.stopped:
			r.res.Ended = "stopped"
		case r.sent >= o.MaxRequests:
			r.res.Ended = "max requests"
		case ctx.Err() != nil:
			r.res.Ended = "context canceled"
		default:
			r.res.Ended = "max duration"
		}
		r.mu.Unlock()
		close(r.done)
	}()
	return r
}

// Done is closed when the run has ended and every worker returned.
func (r *Run) Done() <-chan struct{} { return r.done }

// Stop ends the run: no new request starts, every request in flight
// finishes (within Timeout) and counts. It waits for the workers and
// returns the result, and may be called more than once.
func (r *Run) Stop() Result {
	r.mu.Lock()
	select {
	case <-r.done:
	default:
		r.stopped = true
	}
	r.mu.Unlock()
	r.once.Do(func() { close(r.stop) })
	<-r.done
	return r.Snapshot()
}

// Wait waits until the run ends on its own (MaxRequests, MaxDuration or
// its context) and returns the result.
func (r *Run) Wait() Result {
	<-r.done
	return r.Snapshot()
}

// Snapshot returns a copy of what the run has recorded so far.
func (r *Run) Snapshot() Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.res
	c.Failures = cloneMap(r.res.Failures)
	c.Status = cloneMap(r.res.Status)
	c.Releases = cloneMap(r.res.Releases)
	c.Examples = slices.Clone(r.res.Examples)
	c.Latencies = slices.Clone(r.res.Latencies)
	if c.Elapsed == 0 {
		c.Elapsed = time.Since(r.start)
	}
	return c
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// pacer hands out one request start every 1/rate seconds until the run
// stops.
func (r *Run) pacer(ctx context.Context, rate float64) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.stop:
			return
		case <-tick.C:
		}
		select {
		case <-ctx.Done():
			return
		case <-r.stop:
			return
		case r.pace <- struct{}{}:
		}
	}
}

// running reports whether new requests may start.
func (r *Run) running(ctx context.Context) bool {
	select {
	case <-r.stop:
		return false
	case <-ctx.Done():
		return false
	default:
		return true
	}
}

// take reserves the next request, false once MaxRequests were sent.
func (r *Run) take(max int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sent >= max {
		return false
	}
	r.sent++
	return true
}

func (r *Run) work(ctx context.Context, client *http.Client, o Options) {
	var pause *time.Timer
	if o.Pause > 0 {
		pause = time.NewTimer(0)
		defer pause.Stop()
	}
	for r.running(ctx) && r.take(o.MaxRequests) {
		if r.pace != nil {
			select {
			case <-ctx.Done():
				return
			case <-r.stop:
				return
			case <-r.pace:
			}
		}
		if pause != nil {
			select {
			case <-ctx.Done():
				return
			case <-r.stop:
				return
			case <-pause.C:
			}
			pause.Reset(o.Pause)
		}
		began := time.Now()
		release, fail := get(ctx, client, o.URL)
		if ctx.Err() != nil && fail != nil {
			return // cut short by the caller's context: not the site's doing
		}
		r.record(time.Since(began), began.Sub(r.start), release, fail)
	}
}

// record adds one finished request.
func (r *Run) record(latency, at time.Duration, release string, fail *Failure) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Total++
	r.res.Latencies = append(r.res.Latencies, latency)
	if fail == nil {
		r.res.OK++
		if release != "" {
			r.res.Releases[release]++
		}
		return
	}
	fail.At = at
	r.res.Failures[fail.Kind]++
	if fail.Status != 0 {
		r.res.Status[fail.Status]++
	}
	if len(r.res.Examples) < maxExamples {
		r.res.Examples = append(r.res.Examples, *fail)
	}
}

// get fetches url once and returns the release its body names, or how
// it failed.
func get(ctx context.Context, client *http.Client, url string) (string, *Failure) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", &Failure{Kind: ConnError, Detail: err.Error()}
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", classify(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return "", classify(fmt.Errorf("read body: %w", err))
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		first, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
		f := &Failure{Kind: Non2xx, Detail: resp.Status}
		if first != "" {
			f.Detail += ": " + first
		}
		f.Status = resp.StatusCode
		return "", f
	}
	return releaseOf(body), nil
}

// releaseOf returns ID from the body's first "release: ID" line.
func releaseOf(body []byte) string {
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		if id, ok := strings.CutPrefix(sc.Text(), "release: "); ok {
			return strings.TrimSpace(id)
		}
	}
	return ""
}

func classify(err error) *Failure {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return &Failure{Kind: Timeout, Detail: err.Error()}
	}
	return &Failure{Kind: ConnError, Detail: err.Error()}
}
