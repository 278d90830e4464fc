package api

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Client talks to a drover server. Every request is bounded in time and
// every answer in size, so a server that hangs, trickles or floods never
// holds its caller for long.
type Client struct {
	Base  string // like http://127.0.0.1:8700
	Token string
	HTTP  *http.Client
	// Timeout bounds one request, answer included (default 1m). A
	// long-poll gets its wait plus LongPollMargin (default 30s) instead.
	Timeout        time.Duration
	LongPollMargin time.Duration
	// MaxResponse bounds the size of one answer (default 64 MiB).
	MaxResponse int64
}

// Defaults of a Client's limits.
const (
	DefaultTimeout        = time.Minute
	DefaultLongPollMargin = 30 * time.Second
	DefaultMaxResponse    = 64 << 20
	// agentMaxResponse bounds the answers an agent reads: desired state,
	// join, hello, upgrades it records.
	agentMaxResponse = 4 << 20
)

// NewClient returns a client for base with token. caFile, when set, is a
// PEM bundle trusted for the server's TLS certificate.
func NewClient(base, token, caFile string) (*Client, error) {
	base = strings.TrimRight(base, "/")
	if base == "" {
		return nil, errors.New("no server URL: pass --server or set DROVER_SERVER")
	}
	if _, err := url.Parse(base); err != nil {
		return nil, fmt.Errorf("server URL %q: %w", base, err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 4
	tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = 10 * time.Second
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &Client{Base: base, Token: token, HTTP: &http.Client{Transport: tr}}, nil
}

// StatusError is an error answer from the server.
type StatusError struct {
	Code   int
	Msg    string
	Detail string
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("server: %d %s", e.Code, e.Msg)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// IsStatus reports whether err is a StatusError with code.
func IsStatus(err error, code int) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == code
}

// do sends a request with a JSON body (nil for none) and decodes the JSON
// answer into out (nil to discard), within the client's default limits.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	return c.call(ctx, method, path, body, out, 0, 0)
}

// call is do with a time limit (0: c.Timeout) and an answer size limit (0:
// c.MaxResponse).
func (c *Client) call(ctx context.Context, method, path string, body, out any, timeout time.Duration, maxResponse int64) error {
	if timeout <= 0 {
		timeout = cmp.Or(c.Timeout, DefaultTimeout)
	}
	if maxResponse <= 0 {
		maxResponse = cmp.Or(c.MaxResponse, DefaultMaxResponse)
	}
	what := method + " " + strings.SplitN(path, "?", 2)[0]
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, r)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	// timedOut says what went wrong when ctx ended but the caller's did not.
	timedOut := func(err error) error {
		if parent.Err() == nil && ctx.Err() != nil {
			return fmt.Errorf("the drover server at %s did not answer %s within %s (is it overloaded, or is the address not a drover server?): %w", c.Base, what, timeout, ErrTimeout)
		}
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		if parent.Err() != nil {
			return err
		}
		if te := timedOut(err); te != err {
			return te
		}
		return fmt.Errorf("cannot reach the drover server at %s (is it running? --server or DROVER_SERVER): %w", c.Base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return &StatusError{Code: resp.StatusCode, Msg: e.Error, Detail: e.Detail}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return timedOut(fmt.Errorf("read the answer of the drover server at %s to %s: %w", c.Base, what, err))
	}
	if int64(len(b)) > maxResponse {
		return fmt.Errorf("the answer of the drover server at %s to %s is over %d bytes; refused (is the address a drover server?): %w", c.Base, what, maxResponse, ErrTooLarge)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("the answer of the drover server at %s to %s is not what drover expects: %w", c.Base, what, err)
	}
	return nil
}

// Errors of a request that hit one of the client's limits.
var (
	ErrTimeout  = errors.New("request timed out")
	ErrTooLarge = errors.New("answer too large")
)

// CreateRelease records a release and queues its rollout. A 409
// StatusError says the environment is busy (with NoWait), naming who holds
// it and who waits; a 400 one that the config or strategy was refused.
func (c *Client) CreateRelease(ctx context.Context, r CreateRelease) (*ReleaseCreated, error) {
	var out ReleaseCreated
	return &out, c.do(ctx, http.MethodPost, Prefix+"/releases", r, &out)
}

// Rollouts lists app's rollouts (of env when not empty), newest first:
// running, queued with their position, finished; limit 0 is the server's
// default.
func (c *Client) Rollouts(ctx context.Context, app, env string, limit int) ([]Rollout, error) {
	var out []Rollout
	q := url.Values{"app": {app}}
	if env != "" {
		q.Set("env", env)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	return out, c.do(ctx, http.MethodGet, Prefix+"/rollouts?"+q.Encode(), nil, &out)
}

// Rollout returns one rollout with its nodes' progress.
func (c *Client) Rollout(ctx context.Context, id int64) (*Rollout, error) {
	var out Rollout
	return &out, c.do(ctx, http.MethodGet, fmt.Sprintf("%s/rollouts/%d", Prefix, id), nil, &out)
}

// CancelRollout cancels a queued rollout (409 when it runs or ended).
func (c *Client) CancelRollout(ctx context.Context, id int64) (*Rollout, error) {
	var out Rollout
	return &out, c.do(ctx, http.MethodPost, fmt.Sprintf("%s/rollouts/%d/cancel", Prefix, id), nil, &out)
}

// Decide promotes or aborts (decision "promote" or "abort") canary
// rollout id.
func (c *Client) Decide(ctx context.Context, id int64, decision string) (*Rollout, error) {
	var out Rollout
	return &out, c.do(ctx, http.MethodPost, fmt.Sprintf("%s/rollouts/%d/decide", Prefix, id), Decision{Decision: decision}, &out)
}

// DecideEnv promotes or aborts app/env's running canary rollout.
func (c *Client) DecideEnv(ctx context.Context, app, env, decision string) (*Rollout, error) {
	var out Rollout
	q := url.Values{"app": {app}, "env": {env}}
	return &out, c.do(ctx, http.MethodPost, Prefix+"/rollouts/decide?"+q.Encode(), Decision{Decision: decision}, &out)
}

// Queue returns app/env's deploy lock holder and queue.
func (c *Client) Queue(ctx context.Context, app, env string) (*Queue, error) {
	var out Queue
	q := url.Values{"app": {app}, "env": {env}}
	return &out, c.do(ctx, http.MethodGet, Prefix+"/queue?"+q.Encode(), nil, &out)
}

// Releases lists releases of app (and env when not empty), newest first.
func (c *Client) Releases(ctx context.Context, app, env string) ([]Release, error) {
	var out []Release
	q := url.Values{"app": {app}}
	if env != "" {
		q.Set("env", env)
	}
	return out, c.do(ctx, http.MethodGet, Prefix+"/releases?"+q.Encode(), nil, &out)
}

// Resolve reports the commit a release's spec resolved to and returns the
// commit the server holds for it (the first resolver's).
func (c *Client) Resolve(ctx context.Context, id int64, commit string) (string, error) {
	var out Release
	err := c.call(ctx, http.MethodPost, fmt.Sprintf("%s/releases/%d/resolve", Prefix, id), ResolveRelease{Commit: commit}, &out, 0, agentMaxResponse)
	return out.Commit, err
}

// Join exchanges a one-time join token for a node token.
func (c *Client) Join(ctx context.Context, j Join) (*Joined, error) {
	var out Joined
	return &out, c.call(ctx, http.MethodPost, Prefix+"/agents/join", j, &out, 0, agentMaxResponse)
}

// Hello tells the server what this node runs.
func (c *Client) Hello(ctx context.Context, h Hello) error {
	return c.call(ctx, http.MethodPost, Prefix+"/agents/hello", h, nil, 0, agentMaxResponse)
}

// Desired long-polls for this node's desired state: it returns at once
// when the server's version differs from version, else after wait at most.
// The request may take wait plus c.LongPollMargin.
func (c *Client) Desired(ctx context.Context, version int64, wait time.Duration) (*Desired, error) {
	var out Desired
	q := url.Values{"version": {strconv.FormatInt(version, 10)}, "wait": {wait.String()}}
	return &out, c.call(ctx, http.MethodGet, Prefix+"/agents/desired?"+q.Encode(), nil, &out, wait+cmp.Or(c.LongPollMargin, DefaultLongPollMargin), agentMaxResponse)
}

// StartUpgrade records that this node begins moving to a release.
func (c *Client) StartUpgrade(ctx context.Context, s StartUpgrade) (*Upgrade, error) {
	var out Upgrade
	return &out, c.call(ctx, http.MethodPost, Prefix+"/upgrades", s, &out, 0, agentMaxResponse)
}

// Report sends an upgrade's progress.
func (c *Client) Report(ctx context.Context, id int64, r Report) error {
	return c.call(ctx, http.MethodPost, fmt.Sprintf("%s/upgrades/%d/report", Prefix, id), r, nil, 0, agentMaxResponse)
}

// Status lists every node of app (and env) with its upgrade status.
func (c *Client) Status(ctx context.Context, app, env string) ([]NodeStatus, error) {
	var out []NodeStatus
	q := url.Values{"app": {app}}
	if env != "" {
		q.Set("env", env)
	}
	return out, c.do(ctx, http.MethodGet, Prefix+"/status?"+q.Encode(), nil, &out)
}

// Upgrades lists the upgrades of app (and env), newest first, with steps.
func (c *Client) Upgrades(ctx context.Context, app, env string) ([]Upgrade, error) {
	var out []Upgrade
	q := url.Values{"app": {app}}
	if env != "" {
		q.Set("env", env)
	}
	return out, c.do(ctx, http.MethodGet, Prefix+"/upgrades?"+q.Encode(), nil, &out)
}

// CreateJoinToken makes a one-time join token with the scope in req.
func (c *Client) CreateJoinToken(ctx context.Context, req CreateJoinToken) (*JoinToken, error) {
	var out JoinToken
	if err := c.do(ctx, http.MethodPost, Prefix+"/join-tokens", req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
