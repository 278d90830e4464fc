// Package transport opens the hosts of an environment as rollout targets:
// `transport: local` hosts run the engine in a child process, the others
// over one reused SSH connection each. Dials are parallel and bounded.
package transport

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/transport/local"
	"github.com/drover/drover/internal/transport/ssh"
)

// Options are how to reach hosts.
type Options struct {
	Binary       string   // the drover binary to run on hosts; default os.Executable()
	Env          []string // extra environment for local node processes
	KnownHosts   string   // user known_hosts file; default as ssh(1): the ssh config's UserKnownHostsFile, else ~/.ssh/known_hosts{,2} (global files are read too)
	SSHConfig    string   // default ~/.ssh/config
	IdentityFile string   // used when a host names none
	AcceptNew    bool     // add unknown host keys to known_hosts
	MaxDials     int      // concurrent SSH dials; default 16

	explicitBinary bool
	binary         ssh.Binary // hashed once for every host
}

// HostError is a host that could not be opened.
type HostError struct {
	Host string
	Err  error
}

func (e *HostError) Error() string {
	// The SSH client already names the host in its errors; say it once.
	if msg := e.Err.Error(); strings.HasPrefix(msg, e.Host+": ") {
		return msg
	}
	return fmt.Sprintf("%s: %v", e.Host, e.Err)
}
func (e *HostError) Unwrap() error { return e.Err }

// Set is the open nodes of one rollout; Close closes them all.
type Set struct {
	Nodes   []*Node
	closers []func() error
}

// Targets returns the nodes as rollout targets.
func (s *Set) Targets() []rollout.Target { return Targets(s.Nodes) }

// Targets returns nodes as rollout targets.
func Targets(nodes []*Node) []rollout.Target {
	out := make([]rollout.Target, len(nodes))
	for i, n := range nodes {
		out[i] = n
	}
	return out
}

// Close closes every connection.
func (s *Set) Close() {
	for _, c := range s.closers {
		_ = c()
	}
}

// Open reaches every host. It returns the targets in host order and one
// *HostError per host that could not be reached; the caller decides
// whether to go on without them.
func Open(ctx context.Context, hosts []*config.Host, opts Options) (*Set, []*HostError) {
	opts.explicitBinary = opts.Binary != ""
	if opts.Binary == "" {
		opts.Binary, _ = os.Executable()
	}
	if needsSSH(hosts) {
		b, err := ssh.LoadBinary(opts.Binary)
		if err != nil {
			errs := make([]*HostError, len(hosts))
			for i, h := range hosts {
				errs[i] = &HostError{Host: h.Name, Err: err}
			}
			return &Set{}, errs
		}
		if !opts.explicitBinary {
			// This very binary goes to the hosts: they must run what it runs.
			b.Platform = map[string]string{"linux/amd64": "Linux x86_64", "linux/arm64": "Linux aarch64"}[runtime.GOOS+"/"+runtime.GOARCH]
			if b.Platform == "" {
				b.Platform = "Linux " + runtime.GOARCH
			}
		}
		opts.binary = b
	}
	if opts.MaxDials == 0 {
		opts.MaxDials = 16
	}
	targets := make([]*Node, len(hosts))
	closers := make([]func() error, len(hosts))
	errs := make([]*HostError, len(hosts))
	var g errgroup.Group
	g.SetLimit(opts.MaxDials)
	var mu sync.Mutex
	for i, h := range hosts {
		g.Go(func() error {
			t, closer, err := open(ctx, h, opts)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs[i] = &HostError{Host: h.Name, Err: err}
				return nil
			}
			targets[i], closers[i] = t, closer
			return nil
		})
	}
	_ = g.Wait()
	set := &Set{}
	var failed []*HostError
	for i := range hosts {
		if errs[i] != nil {
			failed = append(failed, errs[i])
			continue
		}
		set.Nodes = append(set.Nodes, targets[i])
		set.closers = append(set.closers, closers[i])
	}
	return set, failed
}

func needsSSH(hosts []*config.Host) bool {
	for _, h := range hosts {
		if h.Transport != config.TransportLocal {
			return true
		}
	}
	return false
}

func open(ctx context.Context, h *config.Host, opts Options) (*Node, func() error, error) {
	if h.Transport == config.TransportLocal {
		return NewNode(&local.Conn{Binary: opts.Binary, Env: opts.Env}, h), func() error { return nil }, nil
	}
	return openSSH(ctx, h, opts)
}
