package api

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// BeginPush puts a push deploy in its environment's queue and returns its
// rollout: running with its Token when it got the lease at once, else
// queued with its Position and the holder.
func (c *Client) BeginPush(ctx context.Context, b BeginPush) (*Rollout, error) {
	var out Rollout
	if err := c.do(ctx, http.MethodPost, Prefix+"/push", b, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// WaitPush long-polls until push rollout id holds its environment's lease
// or wait passes; each call keeps its place in the queue (a deployer that
// stops asking leaves it). The request may take wait plus c.LongPollMargin.
func (c *Client) WaitPush(ctx context.Context, id int64, wait time.Duration) (*Rollout, error) {
	var out Rollout
	q := url.Values{"wait": {wait.String()}}
	path := fmt.Sprintf("%s/push/%d/wait?%s", Prefix, id, q.Encode())
	if err := c.call(ctx, http.MethodPost, path, nil, &out, wait+cmp.Or(c.LongPollMargin, DefaultLongPollMargin), 0); err != nil {
		return nil, err
	}
	return &out, nil
}

// PushProgress reports a push deploy's progress under its lease token and
// renews the lease; with p.Done it ends the rollout and frees the lease.
// A 409 StatusError says the lease was lost: another deploy took the lock.
// Token 0 with p.Done leaves the queue (a deployer interrupted while it
// waited).
func (c *Client) PushProgress(ctx context.Context, id, token int64, p PushProgress) (*Rollout, error) {
	var out Rollout
	q := url.Values{"token": {strconv.FormatInt(token, 10)}}
	if err := c.do(ctx, http.MethodPost, fmt.Sprintf("%s/push/%d/progress?%s", Prefix, id, q.Encode()), p, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
