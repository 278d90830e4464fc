// Package httpload gives tests a bounded HTTP load: GET requests to one URL
// from a few workers, half over kept-alive connections and half on a new
// connection each, counting what failed, who answered and how long it took.
package httpload

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Options shape a Load. Zero values take the defaults.
type Options struct {
	URL     string
	Workers int           // default 8; even ones keep connections alive, odd ones do not
	Max     int64         // requests at most (default 200,000)
	Limit   time.Duration // running time at most (default 2 minutes)
	// Dial opens connections (default: a net.Dialer), e.g. through SSH.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Who names the process that answered, from a 200 body; Answerers
	// counts the names. Nil: not counted.
	Who func(body []byte) string
}

// Load is a running load; Stop ends it.
type Load struct {
	sent, failed atomic.Int64
	mu           sync.Mutex
	errs         []string
	who          map[string]int
	lat          []time.Duration
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	max          int64
}

// Start starts the load.
func Start(o Options) *Load {
	if o.Workers <= 0 {
		o.Workers = 8
	}
	if o.Max <= 0 {
		o.Max = 200_000
	}
	if o.Limit <= 0 {
		o.Limit = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.Limit)
	l := &Load{cancel: cancel, who: map[string]int{}, max: o.Max}
	for i := range o.Workers {
		tr := &http.Transport{DisableKeepAlives: i%2 == 1, MaxIdleConnsPerHost: 1, DialContext: o.Dial}
		client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer tr.CloseIdleConnections()
			for ctx.Err() == nil && l.sent.Add(1) <= o.Max {
				began := time.Now()
				body, err := get(ctx, client, o.URL)
				switch {
				case err != nil && ctx.Err() != nil:
					l.sent.Add(-1) // cut short by Stop: not counted
				case err != nil:
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 5 {
						l.errs = append(l.errs, fmt.Sprintf("%s keep-alive %v: %v", time.Now().Format("15:04:05.000"), i%2 == 0, err))
					}
					l.mu.Unlock()
				default:
					l.mu.Lock()
					l.lat = append(l.lat, time.Since(began))
					if o.Who != nil {
						l.who[o.Who(body)]++
					}
					l.mu.Unlock()
				}
			}
		}()
	}
	return l
}

func get(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, err
}

// Stop ends the load and waits for its workers; it may be called again.
func (l *Load) Stop() {
	l.cancel()
	l.wg.Wait()
}

// Sent returns how many requests were sent.
func (l *Load) Sent() int64 { return min(l.sent.Load(), l.max) }

// Failed returns how many requests failed.
func (l *Load) Failed() int64 { return l.failed.Load() }

// Errors returns the first few failures.
func (l *Load) Errors() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.errs)
}

// Answerers returns how many distinct processes answered (Options.Who).
func (l *Load) Answerers() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.who)
}

// P99 returns the 99th percentile latency of the requests that succeeded.
func (l *Load) P99() time.Duration {
	l.mu.Lock()
	lat := slices.Clone(l.lat)
	l.mu.Unlock()
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return lat[len(lat)*99/100]
}

// String sums the load up for a test log.
func (l *Load) String() string {
	return fmt.Sprintf("%d of %d requests failed (answered by %d processes); first errors: %q", l.Failed(), l.Sent(), l.Answerers(), l.Errors())
}
