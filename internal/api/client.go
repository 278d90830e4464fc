package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Client talks to a drover server.
type Client struct {
	Base  string // like http://127.0.0.1:8700
	Token string
	HTTP  *http.Client
}

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
// answer into out (nil to discard).
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
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
	resp, err := c.HTTP.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return err
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
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// CreateRelease records a release.
func (c *Client) CreateRelease(ctx context.Context, r CreateRelease) (*Release, error) {
	var out Release
	return &out, c.do(ctx, http.MethodPost, Prefix+"/releases", r, &out)
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
	err := c.do(ctx, http.MethodPost, fmt.Sprintf("%s/releases/%d/resolve", Prefix, id), ResolveRelease{Commit: commit}, &out)
	return out.Commit, err
}

// Join exchanges a one-time join token for a node token.
func (c *Client) Join(ctx context.Context, j Join) (*Joined, error) {
	var out Joined
	return &out, c.do(ctx, http.MethodPost, Prefix+"/agents/join", j, &out)
}

// Hello tells the server what this node runs.
func (c *Client) Hello(ctx context.Context, h Hello) error {
	return c.do(ctx, http.MethodPost, Prefix+"/agents/hello", h, nil)
}

// Desired long-polls for this node's desired state: it returns at once
// when the server's version differs from version, else after wait at most.
func (c *Client) Desired(ctx context.Context, version int64, wait time.Duration) (*Desired, error) {
	var out Desired
	q := url.Values{"version": {strconv.FormatInt(version, 10)}, "wait": {wait.String()}}
	return &out, c.do(ctx, http.MethodGet, Prefix+"/agents/desired?"+q.Encode(), nil, &out)
}

// StartUpgrade records that this node begins moving to a release.
func (c *Client) StartUpgrade(ctx context.Context, s StartUpgrade) (*Upgrade, error) {
	var out Upgrade
	return &out, c.do(ctx, http.MethodPost, Prefix+"/upgrades", s, &out)
}

// Report sends an upgrade's progress.
func (c *Client) Report(ctx context.Context, id int64, r Report) error {
	return c.do(ctx, http.MethodPost, fmt.Sprintf("%s/upgrades/%d/report", Prefix, id), r, nil)
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
